package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/relay/relay/perf"
)

// smokeCheck lists what a smoke run got wrong: any gap or duplicate, an
// emitted event not delivered to every fast consumer, a fault event
// delivered, an incomplete or disordered replay, or a missing report file.
func smokeCheck(res *perf.Result, dir string) []string {
	var problems []string
	fail := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	f := res.Fleet
	if f.Gaps != 0 || f.Duplicates != 0 {
		fail("%d gaps (%d missing seqs), %d duplicates", f.Gaps, f.Missing, f.Duplicates)
	}
	if res.Emit.Emitted == 0 {
		fail("nothing was emitted")
	}
	if res.Delivered != res.Emit.Emitted {
		fail("every fast consumer should have all %d events, the fewest was %d", res.Emit.Emitted, res.Delivered)
	}
	if f.FaultsDelivered != 0 {
		fail("%d fault events reached consumers", f.FaultsDelivered)
	}
	if f.ScanErrors != 0 || f.ErrorFrames != 0 {
		fail("%d unreadable frames, %d error frames", f.ScanErrors, f.ErrorFrames)
	}
	if rp := res.Replay; rp == nil || !rp.Complete || rp.Gaps != 0 || rp.Duplicates != 0 {
		fail("replay from cursor 0 incomplete or out of order: %+v", rp)
	}
	var back []perf.Result
	if b, err := os.ReadFile(filepath.Join(dir, "results.json")); err != nil {
		fail("results.json: %v", err)
	} else if err := json.Unmarshal(b, &back); err != nil || len(back) != 1 {
		fail("results.json does not hold one result: %v", err)
	}
	if st, err := os.Stat(filepath.Join(dir, "report.md")); err != nil || st.Size() == 0 {
		fail("report.md missing or empty: %v", err)
	}
	if svgs, _ := filepath.Glob(filepath.Join(dir, "*.svg")); len(svgs) != 2 {
		fail("want 2 SVG charts, found %d", len(svgs))
	}
	return problems
}
