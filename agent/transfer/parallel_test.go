package transfer

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestParallel(t *testing.T) {
	t.Parallel()
	t.Run("bounded and complete", func(t *testing.T) {
		var running, peak, done atomic.Int64
		items := make([]int, 12)
		err := Parallel(context.Background(), 3, items, func(ctx context.Context, i int, _ int) error {
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(5 * time.Millisecond) // simulated work, keeps several in flight
			running.Add(-1)
			done.Add(1)
			return nil
		})
		if err != nil || done.Load() != 12 || peak.Load() > 3 || peak.Load() < 2 {
			t.Fatalf("err %v, done %d, peak %d", err, done.Load(), peak.Load())
		}
	})
	t.Run("first error cancels the rest", func(t *testing.T) {
		boom := errors.New("disk 2 failed")
		var cancelled atomic.Int64
		err := Parallel(context.Background(), 4, []int{0, 1, 2, 3}, func(ctx context.Context, i int, _ int) error {
			if i == 2 {
				return boom
			}
			<-ctx.Done() // a long transfer, stopped by the failure of disk 2
			cancelled.Add(1)
			return ctx.Err()
		})
		if !errors.Is(err, boom) || cancelled.Load() != 3 {
			t.Fatalf("err %v, cancelled %d", err, cancelled.Load())
		}
	})
	t.Run("caller cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		var started atomic.Int64
		err := Parallel(ctx, 2, []int{1, 2, 3}, func(ctx context.Context, i int, _ int) error { started.Add(1); return nil })
		if !errors.Is(err, context.Canceled) || started.Load() != 0 {
			t.Fatalf("err %v, started %d", err, started.Load())
		}
	})
}
