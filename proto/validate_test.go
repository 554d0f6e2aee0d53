package proto

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestOptionsMaxMbps(t *testing.T) {
	for _, tc := range []struct {
		body    string
		wantErr string // "" = valid
		want    int
	}{
		{`{}`, "", 0},
		{`{"max_mbps":0}`, "", 0},
		{`{"max_mbps":800}`, "", 800},
		{`{"max_mbps":1000000}`, "", 1000000},
		{`{"max_mbps":-1}`, "options.max_mbps", 0},
		{`{"max_mbps":1000001}`, "options.max_mbps", 0},
	} {
		var o Options
		if err := json.Unmarshal([]byte(tc.body), &o); err != nil {
			t.Fatalf("%s: %v", tc.body, err)
		}
		err := o.Validate()
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tc.body, err)
		case tc.wantErr != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: err %v, want ErrInvalid naming %s", tc.body, err, tc.wantErr)
		case tc.wantErr == "" && o.MaxMbps != tc.want:
			t.Errorf("%s: max_mbps %d, want %d", tc.body, o.MaxMbps, tc.want)
		}
	}
	// A fraction or a string is not a number of megabits: the JSON decoder refuses it.
	for _, body := range []string{`{"max_mbps":1.5}`, `{"max_mbps":"100"}`} {
		var o Options
		if err := json.Unmarshal([]byte(body), &o); err == nil {
			t.Errorf("%s decoded", body)
		}
	}
}
