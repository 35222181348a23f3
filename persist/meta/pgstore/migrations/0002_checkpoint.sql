-- The derived-state checkpoint: the event log seq through which repo
-- heads, account statuses and host cursors are stored, and the relay's
-- per-host resume detail. One row.
CREATE TABLE derived_checkpoint (
	id     boolean PRIMARY KEY DEFAULT true CHECK (id),
	seq    bigint  NOT NULL,
	resume bytea   NOT NULL
);
