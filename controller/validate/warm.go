package validate

import "github.com/hypersdk/hypersdk/proto"

// isWarm reports whether the job is a warm migration (options.warm: copy while the VM
// runs, from snapshots, with changed-block tracking), for which independent disks and
// snapshots that keep CBT off are critical, and a running VM is expected. Warm with a
// conversion_method other than vddk/auto never gets here: proto refuses it with a 400.
func isWarm(def *proto.JobDefinition) bool { return def.Options.Warm }
