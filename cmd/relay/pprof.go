package main

import (
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
)

// startPprof serves net/http/pprof on RELAY_PPROF_ADDR when it is set (a
// diagnostic for profiling a running relay; keep it on loopback). Unset:
// nothing is served.
func startPprof(logger *slog.Logger) {
	addr := os.Getenv("RELAY_PPROF_ADDR")
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() {
		if err := http.ListenAndServe(addr, mux); err != nil {
			logger.Warn("pprof listener failed", "addr", addr, "err", err)
		}
	}()
}
