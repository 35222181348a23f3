-- Relay metadata, first version. IDs are bigserial: dense, small, and the
-- account UID is what event log records carry.

CREATE TABLE host (
	id            bigserial PRIMARY KEY,
	hostname      text        NOT NULL UNIQUE CHECK (hostname = lower(hostname)),
	no_ssl        boolean     NOT NULL DEFAULT false,
	status        text        NOT NULL,
	trusted       boolean     NOT NULL DEFAULT false,
	last_seq      bigint      NOT NULL DEFAULT 0, -- Host.Cursor
	account_limit bigint      NOT NULL DEFAULT 0,
	account_count bigint      NOT NULL DEFAULT 0, -- maintained by the store
	failures      integer     NOT NULL DEFAULT 0,
	created_at    timestamptz NOT NULL,
	updated_at    timestamptz NOT NULL
);

CREATE TABLE account (
	uid             bigserial PRIMARY KEY,
	did             text        NOT NULL UNIQUE,
	host_id         bigint      NOT NULL REFERENCES host (id),
	status          text        NOT NULL,
	upstream_status text        NOT NULL,
	created_at      timestamptz NOT NULL
);

-- For per-host account listings (host takedowns, limits).
CREATE INDEX account_host_id ON account (host_id);

-- One row per account: the head of its repo as last accepted. No foreign
-- key: repo states are written in large blind batches, and a batch must
-- not fail as a whole because of one entry.
CREATE TABLE account_repo (
	uid        bigint PRIMARY KEY,
	rev        text NOT NULL,
	commit_cid text NOT NULL,
	data_cid   text NOT NULL
);

CREATE TABLE domain_ban (
	domain     text PRIMARY KEY CHECK (domain = lower(domain)),
	created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE backfill_progress (
	name       text PRIMARY KEY,
	value      text NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now()
);
