package vsphere

import (
	"context"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

func taskWait(ctx context.Context, c *Client, ref types.ManagedObjectReference) error {
	return object.NewTask(c.vim, ref).Wait(ctx)
}
