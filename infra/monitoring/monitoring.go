// Package monitoring holds payrelay's log-based metrics as one table (metrics.json): terraform.tf
// builds the Cloud Monitoring metrics, alerts and dashboard from it, and the functions' test
// checks every metric against the log entries the real handlers write, so a renamed log field
// breaks a test rather than production's alerts.
package monitoring

import (
	_ "embed"
	"encoding/json"
	"fmt"
)

//go:embed metrics.json
var table []byte

// Metric is one log-based metric.
type Metric struct {
	Name        string            `json:"name"`
	Description string            `json:"description"`
	Kind        string            `json:"kind"` // "" (a counter) or "distribution"
	Unit        string            `json:"unit"`
	Value       string            `json:"value"` // a distribution's jsonPayload field
	Match       map[string]string `json:"match"` // jsonPayload fields and the values counted
	Labels      []string          `json:"labels"`
}

// Metrics returns the table.
func Metrics() ([]Metric, error) {
	var t struct{ Metrics []Metric }
	if err := json.Unmarshal(table, &t); err != nil {
		return nil, fmt.Errorf("monitoring: metrics.json: %w", err)
	}
	return t.Metrics, nil
}

// Matches reports whether a log entry's payload (its JSON fields) is counted by m, and if so
// whether it carries m's labels and value.
func (m Metric) Matches(entry map[string]any) (counted bool, missing []string) {
	for k, v := range m.Match {
		if fmt.Sprint(entry[k]) != v {
			return false, nil
		}
	}
	for _, l := range m.Labels {
		if s, ok := entry[l].(string); !ok || s == "" {
			missing = append(missing, l)
		}
	}
	if m.Value != "" {
		if _, ok := entry[m.Value].(float64); !ok {
			missing = append(missing, m.Value)
		}
	}
	return true, missing
}
