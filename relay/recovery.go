package relay

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/relay/relay/persist/eventlog"
	"github.com/relay/relay/persist/meta"
)

// recoveryReadBytes is how much of the log one recovery read visits.
const recoveryReadBytes = 4 << 20

// recovered is what recoverDerived found: where each host resumes, and
// the log seq the store now reflects.
type recovered struct {
	hosts map[uint64]hostResume
	seq   int64
	// checkpointAt is when the last checkpoint before the start was
	// taken (zero: none): the relay was down since then at most.
	checkpointAt time.Time
	// records replayed past the old checkpoint, and how long it took.
	records  int
	duration time.Duration
}

// recoverDerived makes the store reflect the whole durable event log
// before anything else runs: it replays the records past the last
// checkpoint (their meta sections) into a new checkpoint, and works out
// each host's resume point: the highest cursor the log proves safe, and
// the upstream seqs above it whose events are already in the log.
func recoverDerived(ctx context.Context, log *eventlog.Log, store meta.Store, logger *slog.Logger) (*recovered, error) {
	start := time.Now()
	seq0, blob, err := store.ReadCheckpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	points, at, err := decodeResume(blob)
	if err != nil {
		return nil, err
	}
	stored, err := storedCursors(ctx, store)
	if err != nil {
		return nil, err
	}
	for id, c := range stored {
		p := points[id]
		if c > p.cursor {
			p.cursor = c
		}
		if c > 0 {
			p.known = true
		}
		points[id] = p
	}
	durable := log.DurableSeq()
	out := &recovered{hosts: points, seq: seq0, checkpointAt: at}
	if seq0 > durable {
		// The store saw records the log no longer has (the log was
		// replaced or cut by hand): nothing to replay; say so.
		logger.Warn("checkpoint is ahead of the event log", "checkpoint", seq0, "log", durable)
		out.seq = durable
		return out, nil
	}
	if seq0 == durable {
		return out, nil
	}

	type hostTail struct {
		floor int64
		useqs []int64
	}
	var (
		repos    = map[uint64]meta.RepoState{}
		statuses []meta.StatusChange
		tails    = map[uint64]*hostTail{}
		cursor   = seq0
		records  int
	)
	flush := func(final bool, last int64) error {
		cp := &meta.Checkpoint{Seq: seq0, Resume: blob}
		if final {
			cp.Seq = last
		}
		cp.Repos = make([]meta.RepoState, 0, len(repos))
		for _, rs := range repos {
			cp.Repos = append(cp.Repos, rs)
		}
		cp.Statuses = statuses
		if final {
			cp.Cursors = map[uint64]int64{}
			for id, t := range tails {
				p := points[id]
				p.known = true
				if t.floor > p.cursor {
					p.cursor = t.floor
				}
				done := append(p.done, t.useqs...)
				slices.Sort(done)
				done = slices.Compact(done)
				i, _ := slices.BinarySearch(done, p.cursor+1)
				p.done = slices.Clip(done[i:])
				points[id] = p
				cp.Cursors[id] = p.cursor
			}
			cp.Resume = encodeResume(points, at) // the relay's downtime still counts
		}
		wctx, cancel := context.WithTimeout(ctx, checkpointTimeout)
		defer cancel()
		if err := store.WriteCheckpoint(wctx, cp); err != nil {
			return fmt.Errorf("write recovered state: %w", err)
		}
		clear(repos)
		statuses = statuses[:0]
		return nil
	}
	for cursor < durable {
		var derr error
		last, err := log.ScanAfter(cursor, recoveryReadBytes, func(r eventlog.Record) error {
			records++
			if len(r.Meta) == 0 {
				return nil // written before records carried meta
			}
			m, err := decodeRecordMeta(r.Meta, r.UID)
			if err != nil {
				derr = fmt.Errorf("event log record %d: %w", r.Seq, err)
				return derr
			}
			if m.repo != nil {
				repos[m.repo.UID] = *m.repo
			}
			if m.status != nil {
				statuses = append(statuses, *m.status)
			}
			if m.hostID != 0 {
				t := tails[m.hostID]
				if t == nil {
					t = &hostTail{}
					tails[m.hostID] = t
				}
				t.floor = max(t.floor, m.floor)
				t.useqs = append(t.useqs, m.useq)
			}
			return nil
		})
		if derr != nil {
			return nil, derr
		}
		if err != nil {
			return nil, fmt.Errorf("replay event log for recovery: %w", err)
		}
		if last <= cursor {
			return nil, fmt.Errorf("replay event log for recovery: no progress after seq %d", cursor)
		}
		cursor = last
		if len(repos)+len(statuses) >= recoveryChunk {
			if err := flush(false, cursor); err != nil {
				return nil, err
			}
		}
		// Keep only what can still be above a host's final cursor: seqs
		// at or below the highest floor seen are covered by it.
		for _, t := range tails {
			if len(t.useqs) > recoveryChunk {
				t.useqs = slices.DeleteFunc(t.useqs, func(s int64) bool { return s <= t.floor })
			}
		}
	}
	if err := flush(true, cursor); err != nil {
		return nil, err
	}
	out.seq, out.records, out.duration = cursor, records, time.Since(start)
	logger.Info("derived state recovered from the event log",
		"from", seq0, "to", cursor, "records", records, "hosts", len(tails), "took", out.duration.Round(time.Millisecond))
	return out, nil
}

// storedCursors reads every host's stored cursor.
func storedCursors(ctx context.Context, store meta.Store) (map[uint64]int64, error) {
	out := map[uint64]int64{}
	after := uint64(0)
	for {
		page, err := store.ListHosts(ctx, after, 1000)
		if err != nil {
			return nil, fmt.Errorf("load hosts: %w", err)
		}
		for _, h := range page {
			out[h.ID] = h.Cursor
		}
		if len(page) < 1000 {
			return out, nil
		}
		after = page[len(page)-1].ID
	}
}
