// Package transfer moves a VM's disks from vSphere into local images, streaming, with
// progress, into qcow2 (default) or raw, sparse.
//
// Methods (see Pick for how "auto" chooses):
//
//   - https: the flat extent behind the datastore /folder URL. The text descriptor is parsed
//     (ParseDescriptor) to find the extents; the parallel copier (Copy, copier.go) reads
//     them with several keep-alive connections, in ranges, each range retried on its own,
//     and writes the non-zero blocks straight into the image. Go's TLS does the trust,
//     pinned thumbprints included; the session cookie never leaves the process.
//   - nfc: an HttpNfcLease device URL serving a stream-optimized VMDK (chunked, no Range).
//     StreamOptimizedReader decodes it as it arrives; runs of grains are inflated on several
//     cores and written at their offsets. No temporary copy.
//   - vddk: VMware's libvixDiskLib, loaded by a reader process of the agent (package vddk)
//     where VDDK is unpacked (ProbeVDDK): the snapshot's allocated blocks only
//     (QueryAllocatedBlocks), several connections per disk, written like nfc.
//
// Images are written by the agent itself: raw with pwrite into a sparse file, qcow2 through
// qemu-nbd over a private Unix socket (only qemu writes qcow2). Both start empty, so holes
// and zero blocks cost nothing.
//
// Bandwidth: Output.Limiter (a job's options.max_mbps) and Config.MaxBytesPerSecond (the
// agent's transfer.max_mbps) are token buckets shared by every connection they cover;
// Transferer.Rate reports what the transfers read now, for the agent to advertise.
//
// Every child process runs in its own process group with a parent-death signal; cancelling
// the context kills the groups and removes the partial image. Progress arrives through
// Output.Progress at most once per second plus a final update; Aggregator combines the
// disks of a VM copied with Parallel.
package transfer
