//! Delta APIs of Dropbox (`files/list_folder/continue`), Google Drive (`changes.list` with
//! page tokens) and OneDrive (`/delta`): parsers from their JSON answers to our changes, and
//! the cursor each keeps between polls.

/// Services whose changes come from a delta API rather than a listing diff.
pub fn is_delta_service(service: &str) -> bool {
    matches!(service, "dropbox" | "gdrive" | "onedrive")
}
