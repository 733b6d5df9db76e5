package tether

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Health returns an http.Handler serving /healthz (liveness: is the process
// sound) and /readyz (readiness: should it get traffic). Each answers 200
// with {"status":"ok"}, or 503 with {"status":..., "reasons":[...]}.
// Kubernetes probes can point at them directly.
func (n *Node) Health() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeHealth(w, n.healthReasons())
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		writeHealth(w, n.readyReasons())
	})
	if g, ok := n.opts.metrics.(prometheus.Gatherer); ok {
		mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	}
	return mux
}

func (n *Node) healthReasons() []string {
	if n.ctx.Err() != nil {
		return []string{"closed"}
	}
	return nil
}

func (n *Node) readyReasons() []string {
	return n.healthReasons()
}

type healthBody struct {
	Status  string   `json:"status"`
	Reasons []string `json:"reasons,omitempty"`
}

func writeHealth(w http.ResponseWriter, reasons []string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	body := healthBody{Status: "ok"}
	if len(reasons) > 0 {
		body = healthBody{Status: "unhealthy", Reasons: reasons}
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(body)
}
