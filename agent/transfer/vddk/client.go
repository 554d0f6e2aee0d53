package vddk

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ErrReaderGone: the reader process ended (crashed, killed, or closed) with requests
// outstanding.
var ErrReaderGone = errors.New("vddk reader process is gone")

// Client is the agent's side of one reader process. ReadAt and Extents may be called
// from several goroutines; each request waits for its own answer.
type Client struct {
	conn  io.ReadWriteCloser
	r     *bufio.Reader
	wmu   sync.Mutex
	onLog func(LogLine)
	// Info describes the opened disk.
	Info OpenReply

	mu      sync.Mutex
	nextID  uint32
	pending map[uint32]*call
	closed  bool // CLOSED received
	err     error
	done    chan struct{}
}

type call struct {
	buf    []byte
	blocks []Extent
	err    error
	done   chan struct{}
}

// Open sends the OPEN request over conn (the socket of a started reader process) and
// waits for the disk to be open. onLog receives VDDK's messages (possibly from another
// goroutine, never concurrently). To give up early, kill the reader: conn then ends.
func Open(conn io.ReadWriteCloser, req OpenRequest, onLog func(LogLine)) (*Client, error) {
	c := &Client{conn: conn, r: bufio.NewReaderSize(conn, 256<<10), onLog: onLog, pending: map[uint32]*call{}, done: make(chan struct{})}
	if onLog == nil {
		c.onLog = func(LogLine) {}
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	err = c.write(frameOpen, 0, b)
	clear(b) // the password
	if err != nil {
		return nil, fmt.Errorf("%w: sending OPEN: %v", ErrReaderGone, err)
	}
	for {
		h, err := readHeader(c.r)
		if err != nil {
			return nil, fmt.Errorf("%w before the disk was open: %v", ErrReaderGone, err)
		}
		p := make([]byte, h.n)
		if _, err := io.ReadFull(c.r, p); err != nil {
			return nil, fmt.Errorf("%w before the disk was open: %v", ErrReaderGone, err)
		}
		switch h.typ {
		case frameLog:
			c.log(p)
		case frameError:
			return nil, decodeError(p)
		case frameOpened:
			if err := json.Unmarshal(p, &c.Info); err != nil {
				return nil, fmt.Errorf("vddk reader: bad OPENED: %v", err)
			}
			go c.loop()
			return c, nil
		default:
			return nil, fmt.Errorf("vddk reader: unexpected frame %d before OPENED", h.typ)
		}
	}
}

func decodeError(p []byte) error {
	var e Error
	if err := json.Unmarshal(p, &e.ErrorReply); err != nil {
		return fmt.Errorf("vddk reader: bad ERROR frame: %v", err)
	}
	return &e
}

func (c *Client) log(p []byte) {
	var l LogLine
	if json.Unmarshal(p, &l) == nil {
		c.onLog(l)
	}
}

func (c *Client) write(typ byte, id uint32, payload ...[]byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return writeFrame(c.conn, typ, id, payload...)
}

// loop reads answers and hands each to its request; it ends with the connection.
func (c *Client) loop() {
	err := c.readAnswers()
	c.mu.Lock()
	switch {
	case c.closed:
		err = nil
	case err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		err = ErrReaderGone
	default:
		// A reset socket, or a frame that makes no sense: the reader is of no more use.
		err = fmt.Errorf("%w: %v", ErrReaderGone, err)
	}
	c.err = err
	for id, cl := range c.pending {
		cl.err = err
		if cl.err == nil {
			cl.err = ErrReaderGone
		}
		close(cl.done)
		delete(c.pending, id)
	}
	c.mu.Unlock()
	close(c.done)
}

func (c *Client) take(id uint32) *call {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.pending[id]
	delete(c.pending, id)
	return cl
}

func (c *Client) readAnswers() error {
	for {
		h, err := readHeader(c.r)
		if err != nil {
			return err
		}
		switch h.typ {
		case frameData:
			cl := c.take(h.id)
			if cl == nil || uint64(len(cl.buf)) != h.n {
				return fmt.Errorf("vddk reader: DATA of %d bytes for request %d, which does not want it", h.n, h.id)
			}
			if _, err := io.ReadFull(c.r, cl.buf); err != nil {
				cl.err = fmt.Errorf("%w: %v", ErrReaderGone, err)
				close(cl.done)
				return err
			}
			close(cl.done)
			continue
		case frameClosed:
			c.mu.Lock()
			c.closed = true
			c.mu.Unlock()
			return nil
		}
		p := make([]byte, h.n)
		if _, err := io.ReadFull(c.r, p); err != nil {
			return err
		}
		switch h.typ {
		case frameLog:
			c.log(p)
		case frameBlocks:
			cl := c.take(h.id)
			if cl == nil || len(p)%16 != 0 {
				return fmt.Errorf("vddk reader: unexpected BLOCKS for request %d", h.id)
			}
			for i := 0; i < len(p); i += 16 {
				cl.blocks = append(cl.blocks, Extent{Offset: int64(binary.BigEndian.Uint64(p[i:])), Length: int64(binary.BigEndian.Uint64(p[i+8:]))})
			}
			close(cl.done)
		case frameError:
			cl := c.take(h.id)
			if cl == nil {
				return decodeError(p)
			}
			cl.err = decodeError(p)
			close(cl.done)
		default:
			return fmt.Errorf("vddk reader: unexpected frame %d", h.typ)
		}
	}
}

// do sends one request and waits for its answer.
func (c *Client) do(cl *call, typ byte, payload []byte) error {
	c.mu.Lock()
	if c.err != nil || c.closed {
		err := c.err
		c.mu.Unlock()
		if err == nil {
			err = ErrReaderGone
		}
		return err
	}
	c.nextID++
	id := c.nextID
	cl.done = make(chan struct{})
	c.pending[id] = cl
	c.mu.Unlock()
	if err := c.write(typ, id, payload); err != nil {
		// The loop fails every pending call once the connection is gone.
		<-c.done
	}
	<-cl.done
	return cl.err
}

// ReadAt fills p from offset off. off and len(p) must be whole 512-byte sectors and
// len(p) at most the OpenRequest's MaxRead.
func (c *Client) ReadAt(p []byte, off int64) error {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:], uint64(off))
	binary.BigEndian.PutUint32(b[8:], uint32(len(p)))
	return c.do(&call{buf: p}, frameRead, b[:])
}

// Extents lists the allocated byte ranges in [off, off+n). Its error is of kind
// KindUnsupported when the library lacks QueryAllocatedBlocks.
func (c *Client) Extents(off, n int64) ([]Extent, error) {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:], uint64(off))
	binary.BigEndian.PutUint64(b[8:], uint64(n))
	cl := &call{}
	err := c.do(cl, frameExtents, b[:])
	return cl.blocks, err
}

// Close asks the reader to close its connections and call VixDiskLib_Exit, and waits
// until it has (or the connection ends).
func (c *Client) Close() error {
	err := c.write(frameClose, 0, nil)
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		return err
	}
	if !c.closed {
		return c.err
	}
	return nil
}

// Done is closed once the reader's connection has ended; Err then says why (nil after a
// clean Close).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the connection ended (valid after Done).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
