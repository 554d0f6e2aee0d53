// Package grafana holds the Grafana dashboard of the fleet (hypersdk.json): per-host
// capacity from the controllers' per-agent gauges, migration throughput, and the health
// of the controllers and their API. Import it in Grafana, or provision it from
// /usr/share/hypersdk/grafana/hypersdk.json (the controller package installs it there).
package grafana

import _ "embed"

// Dashboard is the dashboard JSON.
//
//go:embed hypersdk.json
var Dashboard []byte
