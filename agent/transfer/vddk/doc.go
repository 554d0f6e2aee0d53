// Package vddk reads VMware virtual disks through VMware's own libvixDiskLib (the
// Virtual Disk Development Kit), loaded at run time with dlopen, so that the agent builds,
// ships and runs without VDDK and uses it where an operator has unpacked it
// (DIR/lib64/libvixDiskLib.so.8, .7 or .6).
//
// VDDK never runs inside the agent. The agent re-executes its own binary as a reader
// process (`hypersdk-agent vddk-reader serve`, see Main) for each disk, with
// LD_LIBRARY_PATH set to DIR/lib64, and talks to it over a socketpair (protocol.go):
//
//   - VMware's library finds the libraries beside it only through LD_LIBRARY_PATH (it has
//     no rpath), and the dynamic loader reads that variable once, at process start: the
//     agent's own process cannot get it right after the fact, a fresh process can.
//   - VDDK starts threads of its own, installs what it likes, and aborts the process on
//     internal errors. In a reader process a crash fails the reads of one attempt; the
//     agent, its leases and its other jobs carry on.
//   - VDDK's rule that a connection is used by one thread at a time is kept by giving
//     every connection its own locked OS thread in the reader; the agent may keep one
//     request per connection in flight.
//
// The password reaches the reader inside the OPEN frame, in memory only: never in argv,
// the environment or a file. VDDK's log lines come back as LOG frames with the password
// and anything that looks like a credential replaced by "********".
//
// VixDiskLib's ABI (types, struct layouts, function signatures) is in vixdisklib.h; the
// calls go through function pointers resolved with dlsym (shim.c). InitEx runs once per
// reader process and Exit when it ends; ConnectEx and a read-only Open run once per
// connection; GetInfo gives the capacity; QueryAllocatedBlocks (VDDK 6.7 and later) lists
// the allocated ranges so that holes are never read; reads are whole 512-byte sectors.
package vddk
