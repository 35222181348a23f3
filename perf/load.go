package perf

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	comatproto "github.com/bluesky-social/indigo/api/atproto"
	"github.com/gobwas/ws"
)

// epoch anchors monoNanos: latencies are measured on the monotonic clock
// of this process, since emitter and consumers run in it.
var epoch = time.Now()

// monoNanos is the monotonic time since epoch.
func monoNanos() int64 { return int64(time.Since(epoch)) }

// EmitTable maps (did, rev) of pregenerated events to the time they were
// emitted. Its keys are fixed before the timed phase, so consumers look
// them up without a lock; emit times are atomics.
type EmitTable struct {
	slots map[uint64]int32
	times []atomic.Int64 // monoNanos at emit, 0 = not emitted yet
	// faults marks the slots of fault events (a relay must drop them);
	// nil when the batch has none.
	faults []bool
}

// eventKey hashes (did, rev) with FNV-1a; collisions among a run's events
// are negligible (64 bits) and would only drop one latency sample.
func eventKey(did, rev []byte) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for _, c := range did {
		h = (h ^ uint64(c)) * prime
	}
	h = (h ^ '|') * prime
	for _, c := range rev {
		h = (h ^ uint64(c)) * prime
	}
	return h
}

func eventKeyString(did, rev string) uint64 {
	return eventKey([]byte(did), []byte(rev))
}

// EmittedAt returns when the event (did, rev) was emitted, as monotonic
// nanoseconds since the package epoch, or false if unknown or not emitted.
func (t *EmitTable) EmittedAt(did, rev []byte) (int64, bool) {
	if t == nil {
		return 0, false
	}
	slot, ok := t.slots[eventKey(did, rev)]
	if !ok {
		return 0, false
	}
	at := t.times[slot].Load()
	return at, at != 0
}

// Latency returns the time from emit of (did, rev) to now.
func (t *EmitTable) Latency(did, rev []byte) (time.Duration, bool) {
	at, ok := t.EmittedAt(did, rev)
	if !ok {
		return 0, false
	}
	return time.Duration(monoNanos() - at), true
}

// Lookup is Latency that also says whether (did, rev) is a fault event,
// which a correct relay never delivers. ok is false for unknown events.
func (t *EmitTable) Lookup(did, rev []byte) (lat time.Duration, fault, ok bool) {
	if t == nil {
		return 0, false, false
	}
	slot, found := t.slots[eventKey(did, rev)]
	if !found {
		return 0, false, false
	}
	at := t.times[slot].Load()
	if at == 0 {
		return 0, false, false
	}
	return time.Duration(monoNanos() - at), int(slot) < len(t.faults) && t.faults[slot], true
}

// PregenFrame is one event ready to send: its host, upstream seq and frame.
type PregenFrame struct {
	PDS   *PDS
	Seq   int64
	Frame []byte
	DID   string
	Rev   string
	// Fault is the kind of a fault event ("" for a valid one). A garbage
	// fault has no seq and is sent with PDS.EmitRaw.
	Fault FaultKind
	slot  int32
}

// Pregen is a batch of events built before a timed phase, in emit order.
type Pregen struct {
	Frames []PregenFrame
	Table  *EmitTable
	Bytes  int64 // total frame bytes
	// Valid is the number of frames that are not faults: what a correct
	// relay delivers.
	Valid int
	// Hosts are the distinct hosts the batch is emitted on, and
	// DisconnectRate the abrupt disconnects per second the emitter causes
	// among them (from PregenOptions.Faults).
	Hosts          []*PDS
	DisconnectRate float64
}

// PregenOptions shapes a pregenerated batch.
type PregenOptions struct {
	// Events is the number of #commit events.
	Events int
	// Accounts to write to (default: all of the network); each event goes
	// to a uniformly chosen account, on the account's current host.
	Accounts []*Account
	// Ops per commit; 0 means a realistic mix: mostly 1, sometimes 2-3,
	// rarely up to 10 (mean about 1.5).
	Ops int
	// Workers building commits in parallel (default GOMAXPROCS). An account
	// is always built by the same worker, so its commits chain in order.
	Workers int
	// Seed makes the account schedule reproducible (0: random).
	Seed uint64
	// Faults mixes fault events into the batch.
	Faults FaultOptions
}

// ErrNoAccounts is returned by Pregenerate with no account to write to.
var ErrNoAccounts = errors.New("perf: no accounts to pregenerate events for")

// Pregenerate builds opts.Events signed commits and encodes their frames
// with upstream seqs reserved on each account's host. Emit them (with an
// Emitter, or PDS.EmitFrame in order) before emitting anything else on
// those hosts.
func (n *Network) Pregenerate(opts PregenOptions) (*Pregen, error) {
	if opts.Accounts == nil {
		opts.Accounts = n.Accounts
	}
	return Pregenerate(opts)
}

// Pregenerate is Network.Pregenerate for an explicit account list.
func Pregenerate(opts PregenOptions) (*Pregen, error) {
	accts := opts.Accounts
	if len(accts) == 0 {
		return nil, ErrNoAccounts
	}
	if err := opts.Faults.validate(); err != nil {
		return nil, err
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	seed := opts.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	hosts := make([]*PDS, len(accts))
	hostIndex := make(map[*PDS]int)
	var distinct []*PDS
	for i, a := range accts {
		if hosts[i] = a.PDS(); hosts[i] == nil {
			return nil, fmt.Errorf("perf: account %s has no PDS", a.DID)
		}
		if _, ok := hostIndex[hosts[i]]; !ok {
			hostIndex[hosts[i]] = len(distinct)
			distinct = append(distinct, hosts[i])
		}
	}
	// Accounts that write valid events, and those set aside for
	// wrong-host faults.
	var senders, victims []int32
	for i := range accts {
		if opts.Faults.WrongHost > 0 && len(distinct) >= 2 && len(accts) >= 2 && i%wrongHostVictimShare == wrongHostVictimShare-1 {
			victims = append(victims, int32(i))
		} else {
			senders = append(senders, int32(i))
		}
	}
	if opts.Faults.WrongHost > 0 && len(distinct) >= 2 && len(accts) >= 2 && len(victims) == 0 {
		victims, senders = senders[len(senders)-1:], senders[:len(senders)-1]
	}

	// Schedule: which account writes each event, what kind it is, with how
	// many ops, and on which host it goes out.
	who := make([]int32, opts.Events)
	ops := make([]uint8, opts.Events)
	kinds := make([]FaultKind, opts.Events)
	dest := make([]*PDS, opts.Events)
	perHost := make(map[*PDS]int)
	for i := range who {
		k := opts.Faults.draw(rng.Float64())
		if k == FaultWrongHost && len(victims) == 0 {
			k = FaultNone
		}
		kinds[i] = k
		if k == FaultWrongHost {
			who[i] = victims[rng.IntN(len(victims))]
			dest[i] = distinct[(hostIndex[hosts[who[i]]]+1)%len(distinct)]
		} else {
			who[i] = senders[rng.IntN(len(senders))]
			dest[i] = hosts[who[i]]
		}
		ops[i] = 1
		if k == FaultNone {
			ops[i] = uint8(opsFor(rng, opts.Ops))
		}
		if k != FaultGarbage {
			perHost[dest[i]]++
		}
	}
	// Seqs: consecutive per host, in schedule order.
	next := make(map[*PDS]int64, len(perHost))
	for h, c := range perHost {
		next[h] = h.ReserveSeqs(c)
	}
	pre := &Pregen{
		Frames:         make([]PregenFrame, opts.Events),
		Table:          &EmitTable{slots: make(map[uint64]int32, opts.Events), times: make([]atomic.Int64, opts.Events)},
		Hosts:          distinct,
		DisconnectRate: opts.Faults.Disconnects,
	}
	if opts.Faults.Any() {
		pre.Table.faults = make([]bool, opts.Events)
	}
	for i := range who {
		h := dest[i]
		pre.Frames[i] = PregenFrame{PDS: h, Fault: kinds[i], slot: int32(i)}
		if kinds[i] != FaultGarbage {
			pre.Frames[i].Seq = next[h]
			next[h]++
		}
	}

	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range who {
				if int(who[i])%workers != w {
					continue
				}
				f := &pre.Frames[i]
				if f.Fault == FaultGarbage {
					f.Frame = GarbageFrame()
					continue
				}
				c, err := buildScheduled(accts[who[i]], f, int(ops[i]))
				if err != nil {
					errs[w] = err
					return
				}
				if f.Frame, err = EncodeEvent(Event{Commit: c}, f.Seq); err != nil {
					errs[w] = err
					return
				}
				f.DID, f.Rev = c.Repo, c.Rev
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for i := range pre.Frames {
		f := &pre.Frames[i]
		pre.Bytes += int64(len(f.Frame))
		if f.Fault == FaultNone {
			pre.Valid++
		}
		if f.DID == "" {
			continue
		}
		key := eventKeyString(f.DID, f.Rev)
		if _, dup := pre.Table.slots[key]; dup && f.Fault != FaultNone {
			// A fault that collides with an earlier event keeps no slot, so
			// the earlier (valid) event is never counted as a fault.
			continue
		}
		pre.Table.slots[key] = f.slot
		if pre.Table.faults != nil {
			pre.Table.faults[f.slot] = f.Fault != FaultNone
		}
	}
	return pre, nil
}

// buildScheduled builds the commit for f. A stale-rev fault of an account
// without a commit yet becomes a valid commit (f.Fault is cleared).
func buildScheduled(a *Account, f *PregenFrame, ops int) (*comatproto.SyncSubscribeRepos_Commit, error) {
	switch f.Fault {
	case FaultBadSignature:
		return a.BadSignatureCommit()
	case FaultStaleRev:
		c, err := a.StaleRevCommit()
		if !errors.Is(err, ErrNoCommit) {
			return c, err
		}
		f.Fault = FaultNone
	}
	return a.Commit(ops)
}

// opsFor draws an op count: fixed when n > 0, else the realistic mix.
func opsFor(rng *rand.Rand, n int) int {
	if n > 0 {
		return min(n, math.MaxUint8)
	}
	x := rng.IntN(100)
	switch {
	case x < 75:
		return 1
	case x < 90:
		return 2
	case x < 97:
		return 3
	default:
		return 4 + rng.IntN(7)
	}
}

// Profile is a target emit rate (events per second) over the elapsed time
// of a run.
type Profile struct {
	Name string
	rate func(elapsed time.Duration) float64
}

// Rate is the target events per second at elapsed.
func (p Profile) Rate(elapsed time.Duration) float64 {
	if p.rate == nil {
		return 0
	}
	return max(0, p.rate(elapsed))
}

// Steady emits at a constant rate.
func Steady(rate float64) Profile {
	return Profile{
		Name: fmt.Sprintf("steady %.0f/s", rate),
		rate: func(time.Duration) float64 { return rate },
	}
}

// Burst emits at base, except for the first quarter of every period, when
// it emits at peak.
func Burst(base, peak float64, period time.Duration) Profile {
	return Profile{
		Name: fmt.Sprintf("burst %.0f/s, %.0f/s peaks every %s", base, peak, period),
		rate: func(t time.Duration) float64 {
			if period > 0 && t%period < period/4 {
				return peak
			}
			return base
		},
	}
}

// Ramp goes linearly from one rate to another over dur, then holds.
func Ramp(from, to float64, dur time.Duration) Profile {
	return Profile{
		Name: fmt.Sprintf("ramp %.0f/s to %.0f/s over %s", from, to, dur),
		rate: func(t time.Duration) float64 {
			if dur <= 0 || t >= dur {
				return to
			}
			return from + (to-from)*float64(t)/float64(dur)
		},
	}
}

// emitTick is the emitter's pacing interval: events due in one tick are
// emitted together, so emit times are accurate to about a millisecond.
const emitTick = time.Millisecond

// EmitStats is what an Emitter did.
type EmitStats struct {
	// Emitted counts valid events (what a correct relay delivers).
	Emitted int64         `json:"emitted"`
	Errors  int64         `json:"errors"`
	Elapsed time.Duration `json:"elapsed_ns"`
	PerSec  []int64       `json:"per_second"` // valid events emitted in each second
	Profile string        `json:"profile"`
	// Finished: every pregenerated event was emitted.
	Finished bool `json:"finished"`
	// Faults counts fault events emitted, by kind; Disconnects the
	// abrupt disconnects caused.
	Faults      map[FaultKind]int64 `json:"faults,omitempty"`
	Disconnects int64               `json:"disconnects,omitempty"`
}

// Emitter sends a Pregen's frames at a Profile's aggregate rate across the
// hosts, stamping each event's emit time in the Pregen's table.
type Emitter struct {
	pre     *Pregen
	profile Profile
	emitted atomic.Int64
}

// NewEmitter prepares to emit pre at profile's rate.
func NewEmitter(pre *Pregen, profile Profile) *Emitter {
	return &Emitter{pre: pre, profile: profile}
}

// Emitted is the number of valid events emitted so far.
func (e *Emitter) Emitted() int64 { return e.emitted.Load() }

// Run emits until every frame is sent, maxDur elapses (0: no limit) or ctx
// ends. It returns early with what it did; it can be called once. The
// profile's rate counts every frame, faults included.
func (e *Emitter) Run(ctx context.Context, maxDur time.Duration) EmitStats {
	st := EmitStats{Profile: e.profile.Name}
	frames := e.pre.Frames
	start := time.Now()
	tick := time.NewTicker(emitTick)
	defer tick.Stop()
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	var due, discDue float64
	last := time.Duration(0)
	i := 0
	for i < len(frames) {
		select {
		case <-ctx.Done():
			st.Elapsed = time.Since(start)
			return st
		case <-tick.C:
		}
		el := time.Since(start)
		if maxDur > 0 && el >= maxDur {
			break
		}
		// Trapezoid integral of the rate over the last interval.
		due += (e.profile.Rate(last) + e.profile.Rate(el)) / 2 * (el - last).Seconds()
		if len(e.pre.Hosts) > 0 {
			discDue += e.pre.DisconnectRate * (el - last).Seconds()
			for ; discDue >= 1; discDue-- {
				e.pre.Hosts[rng.IntN(len(e.pre.Hosts))].DropConnections()
				st.Disconnects++
			}
		}
		last = el
		sec := int(el / time.Second)
		for len(st.PerSec) <= sec {
			st.PerSec = append(st.PerSec, 0)
		}
		now := monoNanos()
		for ; i < len(frames) && float64(i) < due; i++ {
			f := &frames[i]
			e.pre.Table.times[f.slot].Store(now)
			var err error
			if f.Fault == FaultGarbage {
				f.PDS.EmitRaw(f.Frame, ws.OpBinary)
			} else {
				err = f.PDS.EmitFrame(f.Seq, f.Frame)
			}
			switch {
			case err != nil:
				st.Errors++
			case f.Fault != FaultNone:
				if st.Faults == nil {
					st.Faults = make(map[FaultKind]int64)
				}
				st.Faults[f.Fault]++
			default:
				st.Emitted++
				st.PerSec[sec]++
				e.emitted.Add(1)
			}
		}
	}
	st.Elapsed = time.Since(start)
	st.Finished = i == len(frames)
	return st
}
