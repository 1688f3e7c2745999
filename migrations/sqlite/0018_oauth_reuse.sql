-- When an authorization code was presented again after its first exchange. The first
-- exchange records its token only while this is NULL, so a second presenter that races the
-- first either revokes the token it finds or leaves the first exchange with nothing to give.
ALTER TABLE oauth_codes ADD COLUMN reused_ms BIGINT;
