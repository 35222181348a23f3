package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/relay/relay/perf"
)

// listAllByCollection pages the relay's listReposByCollection; ok=false
// when the relay answers anything but 200 (starting, index behind).
func listAllByCollection(api, coll string) ([]string, bool) {
	out := []string{}
	cursor := ""
	for {
		q := url.Values{"collection": {coll}, "limit": {"50"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		res, err := http.Get("http://" + api + "/xrpc/com.atproto.sync.listReposByCollection?" + q.Encode())
		if err != nil {
			return nil, false
		}
		var body struct {
			Repos []struct {
				DID string `json:"did"`
			} `json:"repos"`
			Cursor string `json:"cursor"`
		}
		err = json.NewDecoder(res.Body).Decode(&body)
		res.Body.Close()
		if err != nil || res.StatusCode != http.StatusOK {
			return nil, false
		}
		for _, r := range body.Repos {
			out = append(out, r.DID)
		}
		if body.Cursor == "" {
			return out, true
		}
		cursor = body.Cursor
	}
}

// TestKillDuringCollectionOps: the real binary is SIGKILLed three times
// while accounts create, update and delete records across collections
// and #sync events (with changes the relay never saw as ops) make the
// index resync accounts from the PDS's getRepo. After each restart the
// index converges to the generator's record sets: no ghost, nothing
// missing, no op applied twice.
func TestKillDuringCollectionOps(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the relay binary")
	}
	bin := filepath.Join(t.TempDir(), "relay")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	plc, err := perf.StartPLC()
	if err != nil {
		t.Fatal(err)
	}
	defer plc.Close()
	pds, err := perf.StartPDS(perf.PDSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer pds.Close()
	const nAcct, nColl = 40, 8
	colls := make([]string, nColl)
	for i := range colls {
		colls[i] = fmt.Sprintf("com.example.k%d.rec", i)
	}
	var mu sync.Mutex // guards model and the accounts' writes
	model := map[string]map[string]map[string]bool{}
	accts := make([]*perf.Account, nAcct)
	for i := range accts {
		a, err := perf.NewAccount(perf.K256, fmt.Sprintf("k%d.test", i), plc, pds)
		if err != nil {
			t.Fatal(err)
		}
		accts[i] = a
		model[a.DID] = map[string]map[string]bool{}
	}
	rng := rand.New(rand.NewPCG(3, 5))
	next, syncs := 0, 0
	// step makes one account's next commit (emitted) or, 1 time in 40,
	// writes it without emitting and emits a #sync at the new rev.
	step := func() error {
		mu.Lock()
		defer mu.Unlock()
		a := accts[rng.IntN(nAcct)]
		cs := model[a.DID]
		var ws []perf.Write
		touched := map[string]bool{}
		if a.Rev() == "" {
			ws = append(ws, perf.Write{Action: "create", Collection: "app.test.anchor", RKey: "self"})
			cs["app.test.anchor"] = map[string]bool{"self": true}
		}
		for range 1 + rng.IntN(3) {
			cl := colls[rng.IntN(nColl)]
			var live []string
			for k := range cs[cl] {
				if !touched[cl+k] {
					live = append(live, k)
				}
			}
			sort.Strings(live)
			if len(live) > 0 && rng.IntN(2) == 0 {
				k := live[rng.IntN(len(live))]
				touched[cl+k] = true
				delete(cs[cl], k)
				ws = append(ws, perf.Write{Action: "delete", Collection: cl, RKey: k})
				continue
			}
			next++
			k := fmt.Sprintf("r%07d", next)
			if cs[cl] == nil {
				cs[cl] = map[string]bool{}
			}
			cs[cl][k], touched[cl+k] = true, true
			ws = append(ws, perf.Write{Action: "create", Collection: cl, RKey: k})
		}
		hidden := a.Rev() != "" && rng.IntN(40) == 0
		ev, err := a.CommitWrites(ws)
		if err != nil {
			return err
		}
		if !hidden {
			pds.Emit(perf.Event{Commit: ev})
			return nil
		}
		sy, err := a.Sync()
		if err != nil {
			return err
		}
		pds.Emit(perf.Event{Sync: sy})
		syncs++
		return nil
	}
	holders := func(cl string) []string {
		mu.Lock()
		defer mu.Unlock()
		out := []string{}
		for did, cs := range model {
			if len(cs[cl]) > 0 {
				out = append(out, did)
			}
		}
		sort.Strings(out)
		return out
	}
	converge := func(p *relayProc, round int) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for _, cl := range append([]string{"app.test.anchor"}, colls...) {
			want := holders(cl)
			for {
				got, ok := listAllByCollection(p.api, cl)
				if ok && slices.Equal(got, want) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("round %d, %s: index %v\nmodel %v\nrelay log:\n%s", round, cl, got, want, p.stderr.String())
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}

	dataDir := t.TempDir()
	p := startRelayProc(t, bin, dataDir, plc.URL())
	defer func() { _ = p.cmd.Process.Kill(); _ = p.cmd.Wait() }()
	crawl(t, p.api, pds.Host())
	for round := 1; round <= 3; round++ {
		var stop atomic.Bool
		emitted := make(chan error, 1)
		go func() {
			for !stop.Load() {
				if err := step(); err != nil {
					emitted <- err
					return
				}
				time.Sleep(500 * time.Microsecond)
			}
			emitted <- nil
		}()
		// Heavy ops for a while (past the 4 s host cursor flush), then the kill.
		time.Sleep(time.Duration(4500+rng.IntN(2500)) * time.Millisecond)
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = p.cmd.Wait()
		stop.Store(true)
		if err := <-emitted; err != nil {
			t.Fatal(err)
		}
		p = startRelayProc(t, bin, dataDir, plc.URL())
		converge(p, round)
		t.Logf("round %d: converged; %d records created so far", round, next)
	}
	// Changes emitted only through a #sync are in the model: converging
	// proved the resyncs (some interrupted by the kills) completed.
	if syncs < 3 {
		t.Fatalf("only %d #sync resyncs exercised", syncs)
	}
	// Resyncs owed (markers) drain: a resync that lost a race with a newer
	// #sync is retried at the next rescan of the markers.
	var st struct {
		Collections struct {
			Entries       int64 `json:"entries"`
			ResyncPending int64 `json:"resyncPending"`
		} `json:"collections"`
	}
	deadline := time.Now().Add(40 * time.Second)
	for {
		res, err := http.Get("http://" + p.api + "/_stats")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(res.Body).Decode(&st)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if st.Collections.Entries > 0 && st.Collections.ResyncPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/_stats collections %+v", st.Collections)
		}
		time.Sleep(200 * time.Millisecond)
	}
	converge(p, 4)
	t.Logf("%d #sync resyncs, %d entries", syncs, st.Collections.Entries)
}
