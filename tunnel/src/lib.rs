//! Switchyard's tunnel: a WireGuard gateway that links regional private networks. It speaks
//! standard WireGuard (interoperates with wireguard-go and the kernel module), runs the
//! protocol with boringtun's `noise::Tunn` behind our own [`engine::Engine`] trait, and moves
//! packets between a TUN device (tun-rs, with offload) and one UDP socket (quinn-udp, GSO/GRO).
//!
//! Entry points: [`cli::main`] for the `tunnel` binary; [`gateway::Gateway`] to run one.

pub mod cli;
pub mod config;
pub mod control;
pub mod device;
pub mod engine;
pub mod gateway;
pub mod keys;
pub mod node;
pub mod routing;
pub mod udp;
