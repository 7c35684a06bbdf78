-- An environment's base URL (https://dev.example.com): when database content
-- moves between environments, the old URL is rewritten to the new one.
ALTER TABLE environments ADD COLUMN url text;
