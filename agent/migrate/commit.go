package migrate

import (
	"context"
	"fmt"

	"github.com/hypersdk/hypersdk/proto"
)

// commit is the commit point (DESIGN.md "Leases" 8): the line between the steps that only
// touch this attempt's own files (copies, guest conversion, a warm cutover's last delta)
// and the first that changes the host's libvirt. Every path that defines a domain calls it
// right before define: the leader commits this (job, attempt) as the one that defines, or
// refuses (the lease moved on: another attempt may be running, and its domain is the job's
// one; or the job was cancelled). Refused, the attempt returns with the error, and Run's
// cleanup deletes its disks: it never defines. Committed, no other attempt takes the job.
func (j *job) commit(ctx context.Context) error {
	j.stage(proto.StageDefining, fmt.Sprintf("asking the controllers to commit attempt %d before defining %s", j.lease.Attempt, j.info.Name))
	if err := j.rep.Commit(ctx, j.info.Name, j.p.cfg.LibvirtURI); err != nil {
		j.log.Warn("attempt not committed: its disks are deleted and nothing is defined", "err", err)
		return err
	}
	return nil
}
