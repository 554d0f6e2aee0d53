package controller

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/netpolicy"
	"github.com/hypersdk/hypersdk/shared/secrets"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// vsphereLister expands a schedule template's vm_path glob against the template's vCenter
// (schedule.VMLister). It logs in for each expansion: runs are minutes apart at least, and a
// cached session would be one more thing to expire and recover.
type vsphereLister struct {
	log    *slog.Logger
	box    *secrets.Box     // opens a template's sealed password
	policy netpolicy.Policy // where the controller may connect on the template's behalf
}

func (l vsphereLister) ListVMs(ctx context.Context, src proto.Source, glob string) ([]string, error) {
	u, err := proto.ParseVCenterURL(src.VCenterURL)
	if err != nil {
		return nil, err
	}
	if err := l.policy.CheckURL(u); err != nil {
		return nil, err
	}
	pw, err := l.box.Open(src.Password)
	if err != nil {
		return nil, err
	}
	c, err := vsphere.Connect(ctx, vsphere.Config{
		URL: src.VCenterURL, Username: src.Username, Password: pw, Insecure: src.Insecure,
		Thumbprint: src.Thumbprint, Datacenter: src.Datacenter, Dialer: l.policy.Dialer(15 * time.Second), Logger: l.log,
	})
	if err != nil {
		return nil, err
	}
	defer c.Close(context.WithoutCancel(ctx))
	rows, err := c.ListVMs(ctx, glob)
	if err != nil {
		return nil, err
	}
	paths := make([]string, 0, len(rows))
	for _, r := range rows {
		p := r.Path
		if !strings.HasPrefix(glob, "/") {
			// Keep the operator's spelling: "DC0/vm/*" yields "DC0/vm/web-1".
			p = strings.TrimPrefix(p, "/")
		}
		paths = append(paths, p)
	}
	return paths, nil
}
