-- Reusable join tokens: a token enrolls up to `max_uses` spokes (autoscaling groups enroll
-- every instance with one token), each use its own key pair, certificate and spoke row.
-- Enrollment takes one use with a single conditional UPDATE (`uses < max_uses`, unexpired,
-- not revoked), so concurrent enrollments never take more uses than the token has.
-- `max_uses` defaults to 1 and tokens used before this migration count one use, so existing
-- tokens keep their single-use meaning. `used_ms` becomes the time of the latest use;
-- `join_tokens.spoke_id` (the one spoke of a single-use token) is no longer written: a spoke
-- names the token it enrolled with in `spokes.join_token_id`, filled here for spokes enrolled
-- before. Revoking a token (`revoked_ms`) refuses its further uses; the spokes it enrolled
-- keep working.
ALTER TABLE join_tokens ADD COLUMN max_uses BIGINT NOT NULL DEFAULT 1;
ALTER TABLE join_tokens ADD COLUMN uses BIGINT NOT NULL DEFAULT 0;
ALTER TABLE join_tokens ADD COLUMN revoked_ms BIGINT;
UPDATE join_tokens SET uses = 1 WHERE used_ms IS NOT NULL;
ALTER TABLE spokes ADD COLUMN join_token_id TEXT;
UPDATE spokes SET join_token_id = (SELECT t.id FROM join_tokens t WHERE t.spoke_id = spokes.id);
CREATE INDEX spokes_join_token ON spokes(join_token_id);
-- One token now names many spokes, so generated names (`<token name>-<use>`) and names
-- spokes ask for must not collide: a spoke's name is unique among unrevoked spokes.
-- Duplicates from before get their id appended (`name-<id>`), the oldest keeps its name.
UPDATE spokes SET name = name || '-' || id
 WHERE revoked_ms IS NULL
   AND EXISTS (SELECT 1 FROM spokes o
                WHERE o.name = spokes.name AND o.revoked_ms IS NULL AND o.id < spokes.id);
CREATE UNIQUE INDEX spokes_live_name ON spokes(name) WHERE revoked_ms IS NULL;
