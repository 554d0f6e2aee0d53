package validate

import (
	"context"
	"fmt"
	"testing"

	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// BenchmarkReadVMs: reading 100 VMs one by one (FindVM + VMInfo each, what a loop over the
// single-VM calls costs) against the bulk read the validator uses (FindVMs + VMInfos),
// side by side on one simulator.
func BenchmarkReadVMs(b *testing.B) {
	s := startShapes(b, 100)
	ctx := context.Background()
	src := simSource(s)
	c, err := vsphere.Connect(ctx, vsphere.Config{URL: src.VCenterURL, Username: src.Username, Password: src.Password, Thumbprint: src.Thumbprint})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(ctx)
	paths := make([]string, 100)
	for i := range paths {
		paths[i] = fmt.Sprintf("DC0/vm/vm-%d", i+1)
	}
	b.Run("one-by-one", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			for _, p := range paths {
				vm, err := c.FindVM(ctx, p)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.VMInfo(ctx, vm); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("bulk", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			found, err := c.FindVMs(ctx, paths)
			if err != nil || len(found) != len(paths) {
				b.Fatalf("%d found: %v", len(found), err)
			}
			vms := make([]*vsphere.VM, 0, len(paths))
			for _, p := range paths {
				vms = append(vms, found[p])
			}
			if _, err := c.VMInfos(ctx, vms); err != nil {
				b.Fatal(err)
			}
		}
	})
}
