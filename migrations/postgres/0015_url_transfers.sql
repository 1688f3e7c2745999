-- Uploads from a URL that run as transfers (`hub::transfers`, kind `url` or `url_replace`):
-- large files, files of unknown length and `X-Kloudless-Async` uploads are fetched by a spoke
-- (or the hub) like any copy, resumable by parts where the source answers ranges.
--
-- `src_url` is the URL the client gave, sealed with the credentials key (a presigned URL is a
-- credential); `src_path` then holds only its origin, for display. A URL transfer's
-- `part_size` is 0 when its source answers no ranges (it is then copied as one stream) and its
-- `size` is -1 while the length is unknown (set when the file lands).
ALTER TABLE transfers ADD COLUMN src_url BYTEA;
