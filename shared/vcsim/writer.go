package vcsim

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// The guest writer: a powered-on VM of a simulator with Config.WriteRate keeps writing
// its disks, like a guest under load, so that a warm migration has something to catch up
// with. It writes whole 64 KiB grains of random bytes at random grain offsets of a random
// disk, through the disk chain (so into the delta while a snapshot exists) and change
// tracking; it stops before the VM powers off, suspends or is destroyed. Tests read what
// it changed with GuestWrites.

// guestWriter is the writer goroutine of one VM.
type guestWriter struct {
	stop chan struct{}
	done chan struct{}
}

// startWriter starts st's writer if the simulator has a write rate and none runs.
func (s *Sim) startWriter(st *vmDisks) {
	if s.cfg.WriteRate <= 0 || len(st.disks) == 0 {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.writer != nil || !s.startBackground() {
		return
	}
	w := &guestWriter{stop: make(chan struct{}), done: make(chan struct{})}
	st.writer = w
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(s.cfg.Seed))
	copy(seed[8:], st.moref)
	go s.runWriter(st, w, rand.New(rand.NewChaCha8(seed)))
	s.log.Info("guest writer started", "vm", st.name, "mib_per_second", s.cfg.WriteRate)
}

// stopWriter stops st's writer and waits for it: no write lands after it returns.
func (st *vmDisks) stopWriter() {
	st.mu.Lock()
	w := st.writer
	st.writer = nil
	st.mu.Unlock()
	if w != nil {
		close(w.stop)
		<-w.done
	}
}

// writerTick is how often the writer spends its byte budget.
const writerTick = 20 * time.Millisecond

func (s *Sim) runWriter(st *vmDisks, w *guestWriter, rng *rand.Rand) {
	defer s.bgWait.Done()
	defer close(w.done)
	rate := s.cfg.WriteRate * (1 << 20)
	buf := make([]byte, grain)
	t := time.NewTicker(writerTick)
	defer t.Stop()
	last := time.Now()
	var budget float64
	for {
		select {
		case <-w.stop:
			return
		case <-s.bg.Done():
			return
		case now := <-t.C:
			// A stall (a snapshot being merged) does not turn into a burst afterwards.
			budget = min(budget+rate*now.Sub(last).Seconds(), rate)
			last = now
		}
		for budget >= grain {
			d := st.disks[rng.IntN(len(st.disks))]
			g := rng.Int64N(d.grains())
			b := buf[:d.grainLen(g)]
			fillRandom(rng, b)
			st.mu.Lock()
			if st.paused {
				// No write lands after PauseGuest returns, and a pause does not turn
				// into a burst afterwards either.
				st.mu.Unlock()
				budget = 0
				break
			}
			err := d.writeAt(b, g*grain, st.writeEpoch())
			st.mu.Unlock()
			if err != nil {
				s.log.Error("guest writer stopped", "vm", st.name, "err", err)
				return
			}
			budget -= grain
		}
	}
}

func fillRandom(rng *rand.Rand, p []byte) {
	for i := 0; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], rng.Uint64())
	}
}

// PowerOnVMTask starts the guest writer once the VM is on.
func (v *simVM) PowerOnVMTask(ctx *simulator.Context, req *types.PowerOnVM_Task) soap.HasFault {
	if v.sim.cfg.WriteRate <= 0 {
		return v.VirtualMachine.PowerOnVMTask(ctx, req)
	}
	task := simulator.CreateTask(v.Self, "powerOn", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		inner := v.VirtualMachine.PowerOnVMTask(ctx, req)
		if f := inner.Fault(); f != nil {
			if mf, ok := f.VimFault().(types.BaseMethodFault); ok {
				return nil, mf
			}
			return nil, &types.InvalidState{}
		}
		res, fault := waitInner(ctx, inner.(*methods.PowerOnVM_TaskBody).Res.Returnval)
		if fault != nil {
			return nil, fault
		}
		if st, err := v.sim.vmDisksOf(v.VirtualMachine); err != nil {
			v.sim.log.Warn("no guest writer", "vm", v.Name, "err", err)
		} else {
			v.sim.startWriter(st)
		}
		return res, nil
	})
	return &methods.PowerOnVM_TaskBody{Res: &types.PowerOnVM_TaskResponse{Returnval: task.Run(ctx)}}
}

// stopGuest stops the VM's writer before it powers off (its last write is on disk first)
// and notes the time for PoweredOffAt.
func (v *simVM) stopGuest() {
	if st := v.sim.tracked(v.Self.Value); st != nil {
		st.stopWriter()
	}
	v.sim.mu.Lock()
	if v.sim.poweredOff == nil {
		v.sim.poweredOff = map[string]time.Time{}
	}
	v.sim.poweredOff[v.Self.Value] = time.Now()
	v.sim.mu.Unlock()
}

// PoweredOffAt is when the named VM was last powered off, suspended or shut down through
// the SDK (zero: never): benchmarks measure downtime from it.
func (s *Sim) PoweredOffAt(name string) time.Time {
	v, ok := s.VM(name)
	if !ok {
		return time.Time{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.poweredOff[v.Moref]
}

// PowerOffVMTask stops the guest writer, then powers off.
func (v *simVM) PowerOffVMTask(ctx *simulator.Context, req *types.PowerOffVM_Task) soap.HasFault {
	v.stopGuest()
	return v.VirtualMachine.PowerOffVMTask(ctx, req)
}

// SuspendVMTask stops the guest writer, then suspends.
func (v *simVM) SuspendVMTask(ctx *simulator.Context, req *types.SuspendVM_Task) soap.HasFault {
	v.stopGuest()
	return v.VirtualMachine.SuspendVMTask(ctx, req)
}

// DestroyTask stops the guest writer and forgets the VM's disks.
func (v *simVM) DestroyTask(ctx *simulator.Context, req *types.Destroy_Task) soap.HasFault {
	if st := v.sim.forget(v.Self.Value); st != nil {
		st.stopWriter()
		st.close()
	}
	return v.VirtualMachine.DestroyTask(ctx, req)
}

// startWriters starts the writers of the VMs Start powered on.
func (s *Sim) startWriters() error {
	if s.cfg.WriteRate <= 0 {
		return nil
	}
	for _, info := range s.VMs {
		vm, ok := s.model.Map().Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: info.Moref}).(*simulator.VirtualMachine)
		if !ok {
			return fmt.Errorf("vcsim: VM %s vanished", info.Name)
		}
		st, err := s.vmDisksOf(vm)
		if err != nil {
			return fmt.Errorf("vcsim: %w", err)
		}
		s.startWriter(st)
	}
	return nil
}

// DiskWrites is what the guest wrote to one disk since the simulator started.
type DiskWrites struct {
	Bytes  int64
	Writes int64
	// Ranges are the 64 KiB grains written, merged.
	Ranges []Range
}

func (s *Sim) trackedVM(name string) (*vmDisks, error) {
	v, ok := s.VM(name)
	if !ok {
		return nil, fmt.Errorf("vcsim: no VM named %q", name)
	}
	if st := s.tracked(v.Moref); st != nil {
		return st, nil
	}
	vm, ok := s.model.Map().Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref}).(*simulator.VirtualMachine)
	if !ok {
		return nil, fmt.Errorf("vcsim: VM %q was destroyed", name)
	}
	var st *vmDisks
	var err error
	s.model.Map().WithLock(&simulator.Context{}, vm, func() { st, err = s.vmDisksOf(vm) })
	return st, err
}

// GuestWrites reports what the guest of the named VM wrote, per disk in device order.
func (s *Sim) GuestWrites(name string) ([]DiskWrites, error) {
	st, err := s.trackedVM(name)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make([]DiskWrites, len(st.disks))
	for i, d := range st.disks {
		out[i] = DiskWrites{Bytes: d.written, Writes: d.writes, Ranges: d.ranges(func(g int64) bool { return d.dirty[g] })}
	}
	return out, nil
}

// PauseGuest holds (or, with paused false, resumes) the guest writer of the named VM:
// tests that count what a round copies hold it while they measure.
func (s *Sim) PauseGuest(name string, paused bool) error {
	st, err := s.trackedVM(name)
	if err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.paused = paused
	return nil
}

// WriteGuest writes p at off of disk i of the named VM as its guest would (through the
// snapshot chain and change tracking), whatever its power state: tests use it to change
// exactly what they want.
func (s *Sim) WriteGuest(name string, i int, off int64, p []byte) error {
	st, err := s.trackedVM(name)
	if err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if i < 0 || i >= len(st.disks) {
		return fmt.Errorf("vcsim: %s has no disk %d", name, i)
	}
	return st.disks[i].writeAt(p, off, st.writeEpoch())
}

// DiskReader reads disk i of the named VM as the guest sees it now (through any snapshot
// deltas): the source a migration must reproduce.
func (s *Sim) DiskReader(name string, i int) (io.ReaderAt, int64, error) {
	st, err := s.trackedVM(name)
	if err != nil {
		return nil, 0, err
	}
	if i < 0 || i >= len(st.disks) {
		return nil, 0, fmt.Errorf("vcsim: %s has no disk %d", name, i)
	}
	return diskReader{st: st, d: st.disks[i]}, st.disks[i].capacity, nil
}

type diskReader struct {
	st *vmDisks
	d  *chainDisk
}

func (r diskReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.d.capacity {
		return 0, io.EOF
	}
	n := min(int64(len(p)), r.d.capacity-off)
	r.st.mu.Lock()
	defer r.st.mu.Unlock()
	if err := r.d.readAt(p[:n], off, len(r.d.chain)-1); err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}
