package libvirt

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	lv "libvirt.org/go/libvirt"
)

// Console reads a domain's serial console through libvirt's console stream
// (virDomainOpenConsole): no terminal is needed, and no file either, so an agent running
// unprivileged in the libvirt group reads it as well as root does. The domain is started
// paused and resumed only once the stream is attached, so the console holds the guest's
// very first byte (the boot loader's, the kernel's earliest messages).
type Console struct {
	stream *lv.Stream

	mu      sync.Mutex
	text    []byte // the newest consoleKeep bytes, carriage returns removed
	total   int64
	changed chan struct{} // closed and replaced on every new chunk and at the end
	ended   bool
	endErr  error

	closeOnce sync.Once
	readDone  chan struct{}
}

// consoleKeep bounds what a Console remembers: enough for the tail an error shows and for
// the patterns a boot check looks for, which are all near the end.
const consoleKeep = 256 << 10

// startWatched starts dom (create: how) paused, attaches a console reader, and resumes it.
// On error the domain is left as create left it (the caller destroys a transient one).
func startWatched(conn *lv.Connect, create func(flags lv.DomainCreateFlags) (*lv.Domain, error)) (*lv.Domain, *Console, error) {
	dom, err := create(lv.DOMAIN_START_PAUSED)
	if err != nil {
		return nil, nil, err
	}
	st, err := conn.NewStream(0)
	if err != nil {
		return dom, nil, fmt.Errorf("console stream: %s", lvMessage(err))
	}
	// FORCE: an operator's `virsh console` left open must not keep the check blind.
	if err := dom.OpenConsole("", st, lv.DOMAIN_CONSOLE_FORCE); err != nil {
		st.Free()
		return dom, nil, fmt.Errorf("opening the serial console: %s", lvMessage(err))
	}
	c := &Console{stream: st, changed: make(chan struct{}), readDone: make(chan struct{})}
	go c.read()
	if err := dom.Resume(); err != nil {
		c.Close()
		return dom, nil, fmt.Errorf("resuming the domain: %s", lvMessage(err))
	}
	return dom, c, nil
}

func (c *Console) read() {
	defer close(c.readDone)
	buf := make([]byte, 16<<10)
	for {
		n, err := c.stream.Recv(buf)
		if n > 0 {
			c.append(buf[:n])
		}
		if err != nil || n == 0 {
			c.finish(err)
			return
		}
	}
}

func (c *Console) append(b []byte) {
	b = bytes.ReplaceAll(b, []byte("\r"), nil)
	c.mu.Lock()
	c.text = append(c.text, b...)
	if over := len(c.text) - consoleKeep; over > 0 {
		c.text = append(c.text[:0], c.text[over:]...)
	}
	c.total += int64(len(b))
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

func (c *Console) finish(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	c.ended = true
	if err != nil {
		c.endErr = fmt.Errorf("console stream: %s", lvMessage(err))
	}
	close(c.changed)
}

// Text returns what the console showed (its newest 256 KiB) and whether the stream has
// ended (the domain stopped).
func (c *Console) Text() (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.text), c.ended
}

// Changed is closed when new output arrives or the stream ends; call again for the next.
func (c *Console) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		done := make(chan struct{})
		close(done)
		return done
	}
	return c.changed
}

// Wait calls check with the console's text each time it changes until check says done, the
// stream ends, or ctx ends.
func (c *Console) Wait(ctx context.Context, check func(text string, ended bool) bool) error {
	for {
		ch := c.Changed()
		text, ended := c.Text()
		if check(text, ended) || ended {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close stops reading and releases the stream. The domain keeps running.
func (c *Console) Close() {
	c.closeOnce.Do(func() {
		// Abort unblocks a Recv in progress (measured: milliseconds); the reader then
		// ends. Should it not, the stream is left to the reader rather than freed under it.
		_ = c.stream.Abort()
		select {
		case <-c.readDone:
			c.stream.Free()
		case <-time.After(10 * time.Second):
		}
		c.finish(nil)
	})
}

// Tail returns the last n non-empty lines of text, for error messages.
func Tail(text string, n int) []string {
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimRight(l, " \t"); strings.TrimSpace(l) != "" {
			lines = append(lines, stripControl(l))
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// stripControl drops terminal escape sequences and control bytes: consoles of booting
// guests are full of them (cursor moves, colours, the BIOS's screen clears).
func stripControl(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch == 0x1b {
			// ESC [ ... final byte in @-~; ESC c and other two-byte forms.
			if i+1 < len(s) && s[i+1] == '[' {
				j := i + 2
				for j < len(s) && (s[j] < '@' || s[j] > '~') {
					j++
				}
				i = j
			} else {
				i++
			}
			continue
		}
		if ch < 0x20 && ch != '\t' {
			continue
		}
		b.WriteByte(ch)
	}
	return b.String()
}
