// Package transfer moves a VM's disks from vSphere into local images, streaming, with
// progress, and converts them to qcow2 (default) or raw, sparse.
//
// Methods (see Pick for how "auto" chooses):
//
//   - https: the flat extent behind the datastore /folder URL. The text descriptor is parsed
//     (ParseDescriptor) to find the extents; each is served as NBD by `nbdkit curl` with the
//     retry filter (a dropped connection is reopened and the read repeated) and read by
//     `qemu-img convert -W -m N`. The session cookie reaches nbdkit in a 0600 file
//     (cookie=+FILE), never on a command line. Trust that curl cannot express (a pinned
//     thumbprint, a Go tls.Config) goes through an in-process ranged proxy on a private Unix
//     socket instead.
//   - nfc: an HttpNfcLease device URL serving a stream-optimized VMDK (chunked, no Range).
//     StreamOptimizedReader decodes it as it arrives; grains are inflated on several cores
//     and written at their offsets, into a sparse raw file or through qemu-nbd into qcow2.
//     No temporary copy.
//   - vddk: VMware's libvixDiskLib, loaded by a reader process of the agent (package vddk)
//     where VDDK is unpacked (ProbeVDDK): the snapshot's allocated blocks only
//     (QueryAllocatedBlocks), several connections per disk, written like nfc.
//
// Every child process runs in its own process group with a parent-death signal; cancelling
// the context kills the groups and removes the partial image. Progress arrives through
// Output.Progress at most once per second plus a final update; Aggregator combines the
// disks of a VM copied with Parallel.
package transfer
