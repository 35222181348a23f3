// Package dashboard serves the relay's live, read-only operator page at
// /dash/ on the metrics port: one embedded HTML page (no build step, no
// CDN) that polls a small JSON document, /dash/api/state.
//
// The package knows nothing of the relay's internals: it is given a
// Source of snapshot functions at construction. A sampler reads the
// cumulative counters once per interval into a fixed-size ring, so the
// rates over the last minutes cost a bounded amount of memory. Host and
// consumer lists are top-N or paged, so 3,000 hosts and 5,000 consumers
// stay a small document.
package dashboard

import (
	"cmp"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Histogram is a cumulative latency histogram: Buckets hold the count of
// observations per bucket (not cumulative across buckets), each named by
// its upper bound in seconds.
type Histogram struct {
	Buckets []Bucket
}

// Bucket is one histogram bucket.
type Bucket struct {
	Upper float64 // seconds
	Count uint64
}

// Stats are the relay's figures at one instant. Counters are cumulative
// since start; the dashboard turns them into rates.
type Stats struct {
	HeadSeq        int64
	EventsIn       uint64 // events received from hosts
	EventsOut      uint64 // events sequenced (durable)
	FramesSent     uint64 // frames written to consumers
	BytesSent      uint64
	Drops          map[string]uint64 // by reason
	EventLog       EventLog
	SequencerQueue int
	WorkerQueue    int
	Fsync          Histogram
}

// EventLog describes the event log on disk.
type EventLog struct {
	Bytes     int64 `json:"bytes"`
	Segments  int   `json:"segments"`
	OldestSeq int64 `json:"oldestSeq"`
}

// Host is one upstream host.
type Host struct {
	Hostname    string    `json:"hostname"`
	Status      string    `json:"status"`
	Connected   bool      `json:"connected"`
	Failures    int       `json:"failures"`
	LastError   string    `json:"lastError,omitempty"`
	LastErrorAt time.Time `json:"lastErrorAt,omitzero"`
	Cursor      int64     `json:"cursor"`
	LastEvent   time.Time `json:"lastEvent,omitzero"` // when its last event arrived
	Received    int64     `json:"received"`
	Inflight    int       `json:"inflight"`
	Accounts    int64     `json:"accounts"`
}

// Consumer is one firehose consumer.
type Consumer struct {
	ID          uint64    `json:"id"`
	RemoteAddr  string    `json:"remoteAddr"`
	UserAgent   string    `json:"userAgent"`
	Cursor      int64     `json:"cursor"`
	Position    int64     `json:"position"`
	Lag         int64     `json:"lag"`
	Sent        int64     `json:"sent"`
	QueuedBytes int64     `json:"queuedBytes"`
	Since       time.Time `json:"since"`
}

// Source is what the dashboard reads. Every function must be safe to call
// from any goroutine and quick (Ready gets a context with a timeout).
type Source struct {
	Stats     func() Stats
	Hosts     func() []Host
	Consumers func() []Consumer
	// Ready returns "" when the relay is ready, else the reason it is not.
	Ready func(ctx context.Context) string
}

// Options tune the dashboard; zero values take the defaults.
type Options struct {
	Interval time.Duration // sampling interval (default 1 s)
	History  int           // samples kept (default 300: 5 minutes at 1 s)
	Logger   *slog.Logger
}

// List limits of /dash/api/state.
const (
	defaultLimit = 25
	maxLimit     = 500
	readyTimeout = 2 * time.Second
	// latencyWindow is how many samples back the fsync quantiles reach.
	latencyWindow = 10
)

// Dashboard is the page, its JSON endpoint and the sampler.
type Dashboard struct {
	src      Source
	interval time.Duration
	logger   *slog.Logger
	samples  *sampler
	started  time.Time
	mux      *http.ServeMux
}

//go:embed index.html
var indexHTML []byte

// New builds a dashboard over src. Call Run to sample.
func New(src Source, opts Options) *Dashboard {
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.History <= 0 {
		opts.History = 300
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	d := &Dashboard{src: src, interval: opts.Interval, logger: opts.Logger, samples: newSampler(opts.History), started: time.Now()}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /dash/{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:")
		_, _ = w.Write(indexHTML)
	})
	mux.HandleFunc("GET /dash/api/state", d.handleState)
	mux.HandleFunc("/dash/", func(w http.ResponseWriter, req *http.Request) {
		writeError(w, http.StatusNotFound, "NotFound", "no such dashboard path: "+req.URL.Path)
	})
	d.mux = mux
	return d
}

// ServeHTTP serves /dash/ (read-only: GET only).
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) { d.mux.ServeHTTP(w, r) }

// Run samples every interval until stop is closed.
func (d *Dashboard) Run(stop <-chan struct{}) {
	d.Sample()
	t := time.NewTicker(d.interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			d.Sample()
		}
	}
}

// Sample takes one reading of the counters now (Run calls it; tests may).
func (d *Dashboard) Sample() {
	st := d.src.Stats()
	var drops uint64
	for _, v := range st.Drops {
		drops += v
	}
	d.samples.add(sample{
		at: time.Now(), in: st.EventsIn, out: st.EventsOut, frames: st.FramesSent, bytes: st.BytesSent,
		drops: drops, dropsBy: maps.Clone(st.Drops), head: st.HeadSeq, fsync: st.Fsync,
	})
}

// State is the /dash/api/state document.
type State struct {
	Now           time.Time     `json:"now"`
	UptimeSeconds float64       `json:"uptimeSeconds"` // of the dashboard (≈ the relay)
	Ready         bool          `json:"ready"`
	ReadyReason   string        `json:"readyReason,omitempty"`
	HeadSeq       int64         `json:"headSeq"`
	Rates         Rates         `json:"rates"`
	Series        []Point       `json:"series"`
	EventLog      EventLog      `json:"eventLog"`
	Queues        Queues        `json:"queues"`
	Fsync         Latency       `json:"fsync"`
	Drops         []Drop        `json:"drops"`
	Hosts         HostsView     `json:"hosts"`
	Consumers     ConsumersView `json:"consumers"`
	Process       Process       `json:"process"`
}

// Rates are the latest per-second figures (over the last interval).
type Rates struct {
	In, Out, Sent, Drops float64
	BytesSent            float64 `json:"bytesSent"`
}

// MarshalJSON keeps the keys lower-case without tags on every field.
func (r Rates) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]float64{"in": r.In, "out": r.Out, "sent": r.Sent, "drops": r.Drops, "bytesSent": r.BytesSent})
}

// Queues are the pipeline's queue depths.
type Queues struct {
	Sequencer int `json:"sequencer"`
	Workers   int `json:"workers"`
}

// Drop is a drop reason with its total and recent rate.
type Drop struct {
	Reason string  `json:"reason"`
	Total  uint64  `json:"total"`
	Rate   float64 `json:"rate"` // per second over the last minute
}

// HostsView is the hosts section: counts by status and one page of hosts.
type HostsView struct {
	Total     int            `json:"total"`
	Connected int            `json:"connected"`
	ByStatus  map[string]int `json:"byStatus"`
	Failing   int            `json:"failing"` // hosts matching the failing view
	View      string         `json:"view"`    // "failing" or "all"
	Matched   int            `json:"matched"` // hosts matching view and filter
	Offset    int            `json:"offset"`
	List      []HostRow      `json:"list"`
}

// HostRow is a host as the page shows it.
type HostRow struct {
	Host
	CursorAgeSeconds float64 `json:"cursorAgeSeconds"` // since its last event; -1: none yet
}

// ConsumersView is the consumers section: totals and the top N by lag.
type ConsumersView struct {
	Total       int        `json:"total"`
	Lagging     int        `json:"lagging"` // lag > 0
	QueuedBytes int64      `json:"queuedBytes"`
	MaxLag      int64      `json:"maxLag"`
	Offset      int        `json:"offset"`
	List        []Consumer `json:"list"`
}

// Process is the relay process's own figures.
type Process struct {
	Goroutines int   `json:"goroutines"`
	RSSBytes   int64 `json:"rssBytes"` // -1 when unknown
}

// failing: the host is not connected, or has failed lately, or is not
// active. Blocked and banned hosts are an operator's choice, not failures.
func failing(h Host) bool {
	switch h.Status {
	case "blocked", "banned":
		return false
	}
	return !h.Connected || h.Failures > 0 || h.Status != "active"
}

type query struct {
	hostView              string
	hostQ                 string
	hostLimit, hostOffset int
	consLimit, consOffset int
}

func parseQuery(r *http.Request) (query, error) {
	v := r.URL.Query()
	q := query{hostView: "failing", hostLimit: defaultLimit, consLimit: defaultLimit}
	if s := v.Get("hostView"); s != "" {
		if s != "failing" && s != "all" {
			return q, errors.New("hostView must be failing or all")
		}
		q.hostView = s
	}
	q.hostQ = strings.ToLower(strings.TrimSpace(v.Get("hostQ")))
	if len(q.hostQ) > 253 {
		return q, errors.New("hostQ is too long")
	}
	ints := []struct {
		name string
		p    *int
		max  int
	}{
		{"hostLimit", &q.hostLimit, maxLimit}, {"hostOffset", &q.hostOffset, 1 << 30},
		{"consumerLimit", &q.consLimit, maxLimit}, {"consumerOffset", &q.consOffset, 1 << 30},
	}
	for _, x := range ints {
		s := v.Get(x.name)
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > x.max {
			return q, errors.New(x.name + " must be an integer from 0 to " + strconv.Itoa(x.max))
		}
		*x.p = n
	}
	return q, nil
}

func (d *Dashboard) handleState(w http.ResponseWriter, r *http.Request) {
	q, err := parseQuery(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "BadRequest", err.Error())
		return
	}
	st := d.state(r.Context(), q)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, st)
}

func (d *Dashboard) state(ctx context.Context, q query) State {
	now := time.Now()
	st := d.src.Stats()
	ss := d.samples.ordered()
	out := State{
		Now: now, UptimeSeconds: now.Sub(d.started).Seconds(), HeadSeq: st.HeadSeq,
		Series: series(ss), EventLog: st.EventLog,
		Queues: Queues{Sequencer: st.SequencerQueue, Workers: st.WorkerQueue},
		Fsync:  Latency{P50ms: -1, P99ms: -1, Maxms: -1},
	}
	if n := len(out.Series); n > 0 {
		p := out.Series[n-1]
		a, b := ss[len(ss)-2], ss[len(ss)-1]
		out.Rates = Rates{In: p.In, Out: p.Out, Sent: p.Sent, Drops: p.Drops, BytesSent: rate(a.bytes, b.bytes, b.at.Sub(a.at).Seconds())}
	}
	if len(ss) > 0 {
		last := ss[len(ss)-1]
		first := ss[max(0, len(ss)-1-latencyWindow)]
		if len(ss) == 1 {
			first = sample{}
		}
		out.Fsync = windowLatency(first.fsync, last.fsync, last.at.Sub(first.at).Seconds())
		if len(ss) == 1 {
			out.Fsync.WindowSeconds = 0
		}
	}
	out.Drops = drops(st.Drops, ss)
	rctx, cancel := context.WithTimeout(ctx, readyTimeout)
	out.ReadyReason = d.src.Ready(rctx)
	cancel()
	out.Ready = out.ReadyReason == ""
	out.Hosts = hostsView(d.src.Hosts(), q, now)
	out.Consumers = consumersView(d.src.Consumers(), q)
	out.Process = Process{Goroutines: runtime.NumGoroutine(), RSSBytes: rss()}
	return out
}

// drops lists every reason with its total and its rate over the last
// minute (or what the ring holds of it): dropping now first, then by
// total, then by name.
func drops(totals map[string]uint64, ss []sample) []Drop {
	var first, last sample
	if len(ss) >= 2 {
		last = ss[len(ss)-1]
		first = ss[0]
		for _, x := range ss {
			if last.at.Sub(x.at) <= time.Minute {
				first = x
				break
			}
		}
	}
	dt := last.at.Sub(first.at).Seconds()
	out := make([]Drop, 0, len(totals))
	for reason, n := range totals {
		d := Drop{Reason: reason, Total: n}
		if dt > 0 {
			d.Rate = rate(first.dropsBy[reason], last.dropsBy[reason], dt)
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b Drop) int {
		if c := cmp.Compare(b.Rate, a.Rate); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Total, a.Total); c != 0 {
			return c
		}
		return cmp.Compare(a.Reason, b.Reason)
	})
	return out
}

func hostsView(hosts []Host, q query, now time.Time) HostsView {
	v := HostsView{Total: len(hosts), ByStatus: map[string]int{}, View: q.hostView, Offset: q.hostOffset, List: []HostRow{}}
	matched := make([]Host, 0, min(len(hosts), 64))
	for _, h := range hosts {
		v.ByStatus[h.Status]++
		if h.Connected {
			v.Connected++
		}
		f := failing(h)
		if f {
			v.Failing++
		}
		if q.hostView == "failing" && !f {
			continue
		}
		if q.hostQ != "" && !strings.Contains(strings.ToLower(h.Hostname), q.hostQ) {
			continue
		}
		matched = append(matched, h)
	}
	v.Matched = len(matched)
	if q.hostView == "failing" {
		// Most failures first, then the most recent error.
		slices.SortFunc(matched, func(a, b Host) int {
			if c := cmp.Compare(b.Failures, a.Failures); c != 0 {
				return c
			}
			if c := b.LastErrorAt.Compare(a.LastErrorAt); c != 0 {
				return c
			}
			return cmp.Compare(a.Hostname, b.Hostname)
		})
	} else {
		// Busiest first: the hosts an operator looks at.
		slices.SortFunc(matched, func(a, b Host) int {
			if c := cmp.Compare(b.Received, a.Received); c != 0 {
				return c
			}
			return cmp.Compare(a.Hostname, b.Hostname)
		})
	}
	for _, h := range page(matched, q.hostOffset, q.hostLimit) {
		age := -1.0
		if !h.LastEvent.IsZero() {
			age = max(0, now.Sub(h.LastEvent).Seconds())
		}
		v.List = append(v.List, HostRow{Host: h, CursorAgeSeconds: age})
	}
	return v
}

func consumersView(cs []Consumer, q query) ConsumersView {
	v := ConsumersView{Total: len(cs), Offset: q.consOffset}
	for _, c := range cs {
		if c.Lag > 0 {
			v.Lagging++
		}
		v.QueuedBytes += c.QueuedBytes
		v.MaxLag = max(v.MaxLag, c.Lag)
	}
	// Most lagging first, then most bytes queued, then oldest connection.
	slices.SortFunc(cs, func(a, b Consumer) int {
		if c := cmp.Compare(b.Lag, a.Lag); c != 0 {
			return c
		}
		if c := cmp.Compare(b.QueuedBytes, a.QueuedBytes); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	v.List = append([]Consumer{}, page(cs, q.consOffset, q.consLimit)...)
	return v
}

func page[T any](xs []T, offset, limit int) []T {
	if offset >= len(xs) {
		return nil
	}
	return xs[offset:min(len(xs), offset+limit)]
}

// rss reads the resident set size from /proc (Linux); -1 elsewhere.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return -1
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return -1
	}
	return pages * int64(os.Getpagesize())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, name, msg string) {
	writeJSON(w, status, map[string]string{"error": name, "message": msg})
}
