package proto

import (
	"errors"
	"testing"
)

func TestJoinRequestValidate(t *testing.T) {
	cases := []struct {
		req JoinRequest
		ok  bool
	}{
		{JoinRequest{ID: "c2", RaftAddr: "10.0.0.2:8081", APIAddr: "10.0.0.2:8080"}, true},
		{JoinRequest{ID: "c2", RaftAddr: "[::1]:8081", APIAddr: "ctl-2.example:8080"}, true},
		{JoinRequest{RaftAddr: "10.0.0.2:8081", APIAddr: "10.0.0.2:8080"}, false},
		{JoinRequest{ID: "c2", RaftAddr: "10.0.0.2", APIAddr: "10.0.0.2:8080"}, false},
		{JoinRequest{ID: "c2", RaftAddr: "10.0.0.2:0", APIAddr: "10.0.0.2:8080"}, false},
		{JoinRequest{ID: "c2", RaftAddr: ":8081", APIAddr: "10.0.0.2:8080"}, false},
		{JoinRequest{ID: "c2", RaftAddr: "10.0.0.2:8081"}, false},
	}
	for _, tc := range cases {
		err := tc.req.Validate()
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("%+v: %v, want ok=%v", tc.req, err, tc.ok)
		}
	}
}
