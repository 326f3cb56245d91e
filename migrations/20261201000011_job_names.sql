-- A staged name that is not text (bytes that are not UTF-8, control characters) is shown escaped in
-- `file_name`; its bytes are kept here, so nothing about the file is lost.
alter table jobs add column file_name_bytes bytea;
