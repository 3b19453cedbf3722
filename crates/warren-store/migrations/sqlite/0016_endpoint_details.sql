-- What the agent said about each endpoint in its Bind (ngrok's Extra.Name, Metadata and
-- Description, and ForwardsTo), shown by the API's /endpoints as ngrok shows them.
ALTER TABLE endpoints ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE endpoints ADD COLUMN metadata TEXT NOT NULL DEFAULT '';
ALTER TABLE endpoints ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE endpoints ADD COLUMN upstream_url TEXT NOT NULL DEFAULT '';
