package client

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// VCenter is how the controller reaches a vCenter for the VM discovery API. The password
// travels in the X-Vcenter-Password header, never in a URL (a query string ends up in
// proxies' logs), and never in an error message of this package.
type VCenter struct {
	URL        string
	Username   string
	Password   string
	Datacenter string
	Insecure   bool
	// Thumbprint pins the vCenter's certificate (SHA-1 or SHA-256, hex with colons).
	Thumbprint string
}

// vcenterPasswordHeader is how GET /vms/* takes the password out of the query string.
const vcenterPasswordHeader = "X-Vcenter-Password"

func (v VCenter) query() url.Values {
	q := url.Values{}
	q.Set("vcenter_url", v.URL)
	q.Set("username", v.Username)
	if v.Datacenter != "" {
		q.Set("datacenter", v.Datacenter)
	}
	if v.Insecure {
		q.Set("insecure", "true")
	}
	if v.Thumbprint != "" {
		q.Set("thumbprint", v.Thumbprint)
	}
	return q
}

func (v VCenter) header() http.Header {
	h := http.Header{}
	h.Set(vcenterPasswordHeader, v.Password)
	return h
}

// ListVMs calls GET /vms/list. pattern is an inventory path glob ("DC0/vm/prod/*"); empty
// lists every VM of the datacenter.
func (c *Client) ListVMs(ctx context.Context, vc VCenter, pattern string) (proto.VMList, error) {
	q := vc.query()
	if pattern != "" {
		q.Set("pattern", pattern)
	}
	var out proto.VMList
	// Logging in to a vCenter and walking its inventory takes longer than a REST call.
	return out, c.call(ctx, request{method: http.MethodGet, path: "/vms/list", query: q, header: vc.header(), idempotent: true, timeout: 90 * time.Second}, nil, &out)
}

// VMInfo calls GET /vms/info.
func (c *Client) VMInfo(ctx context.Context, vc VCenter, vmPath string) (proto.VMInfo, error) {
	q := vc.query()
	q.Set("vm_path", vmPath)
	var out proto.VMInfo
	return out, c.call(ctx, request{method: http.MethodGet, path: "/vms/info", query: q, header: vc.header(), idempotent: true, timeout: 90 * time.Second}, nil, &out)
}

// VMAction calls POST /vms/{action} (shutdown, poweroff, remove-cdrom).
func (c *Client) VMAction(ctx context.Context, action string, vc VCenter, vmPath string) (proto.MessageResponse, error) {
	body := proto.VMActionRequest{VCenterURL: vc.URL, Username: vc.Username, Password: vc.Password, VMPath: vmPath,
		Datacenter: vc.Datacenter, Insecure: vc.Insecure, Thumbprint: vc.Thumbprint}
	var out proto.MessageResponse
	// A graceful shutdown waits for the guest: allow more than a REST call.
	return out, c.call(ctx, request{method: http.MethodPost, path: "/vms/" + pathEscape(action), timeout: 5 * time.Minute}, body, &out)
}
