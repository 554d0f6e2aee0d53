package vsphere

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrHostBusy: the ESXi host refused an NFC export for lack of resources, with its
// "Failed to allocate ..." fault, as a host serving many exports at once does. It is the
// host's state, not the job's fault: ExportVM asks again with back-off, and the agent
// treats what is left after that as retryable.
var ErrHostBusy = errors.New("ESXi host busy")

// busyRetries is how many times ExportVM asks a busy host again (5, 10, 20, 40, 80 s with
// the default delay: a few minutes for other exports to finish).
const busyRetries = 5

func hostBusy(err error) bool {
	return err != nil && strings.Contains(strings.ToLower(err.Error()), "failed to allocate")
}

// retryBusy calls open until it succeeds, fails for another reason, or the host stayed
// busy busyRetries more times.
func retryBusy[T any](ctx context.Context, c *Client, what string, open func() (T, error)) (T, error) {
	delay := c.busyDelay
	if delay <= 0 {
		delay = 5 * time.Second
	}
	for try := 0; ; try++ {
		v, err := open()
		if !hostBusy(err) {
			return v, err
		}
		if try == busyRetries {
			return v, fmt.Errorf("%w: %s: still refused after %d tries: %v", ErrHostBusy, what, try+1, err)
		}
		c.log.Warn("ESXi host busy: asking again", "vm", what, "try", try+1, "wait", delay, "err", err)
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
}
