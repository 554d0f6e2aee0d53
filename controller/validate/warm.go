package validate

import "github.com/hypersdk/hypersdk/proto"

// isWarm reports whether the job is a warm migration (copy while the VM runs, from
// snapshots, with changed-block tracking). The option arrives with warm migration (issue
// 12); until then every job is cold, and the warm-only severities never apply.
func isWarm(def *proto.JobDefinition) bool { return false }
