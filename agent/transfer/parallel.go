package transfer

import (
	"context"
	"sync"
)

// Parallel runs fn for every item, at most limit at a time (limit ≤ 0 means one at a time),
// and waits for all of them. The first error cancels the context the others run with (a VM
// with one failed disk has failed: the rest of its copy is wasted work) and is returned.
// Outputs of items that succeeded are the caller's to remove.
func Parallel[T any](ctx context.Context, limit int, items []T, fn func(ctx context.Context, i int, item T) error) error {
	if limit <= 0 {
		limit = 1
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, limit)
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	for i, item := range items {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(ctx, i, item); err != nil {
				once.Do(func() { firstErr = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}
