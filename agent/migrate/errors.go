package migrate

import (
	"errors"

	"github.com/hypersdk/hypersdk/agent/libvirt"
	"github.com/hypersdk/hypersdk/agent/transfer"
	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// Sentinel errors of the pipeline itself. Errors of the packages it drives (vsphere,
// transfer, libvirt) are wrapped unchanged, so errors.Is finds their sentinels too.
var (
	// ErrPoweredOn: the VM runs and the job allows neither a guest shutdown nor a power off.
	ErrPoweredOn = errors.New("source VM is powered on")
	// ErrUnsupportedVM: the VM has no disks, or disks the chosen method cannot read.
	ErrUnsupportedVM = errors.New("source VM cannot be migrated")
	// ErrStorage: the agent's storage dir cannot hold the job's files.
	ErrStorage = errors.New("agent storage")
)

// stageError names the stage that failed, so an operator reading the job's error knows
// where it stopped without the agent's logs.
type stageError struct {
	stage string
	err   error
}

func (e *stageError) Error() string { return e.stage + ": " + e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

// classify decides whether err is worth another attempt (possibly on another agent) and
// wraps it with worker.Retryable if so. The rule: failures of the environment (network to
// the source, a transfer broken after nbdkit's own retries, a full disk, libvirtd down)
// may heal or not happen elsewhere; mistakes in the job (credentials, VM path, trust,
// power options, a method this host lacks) fail the same way every time, so retrying them
// only delays the operator's fix.
func classify(stage string, err error) error {
	if err == nil {
		return nil
	}
	err = &stageError{stage: stage, err: err}
	switch {
	case errors.Is(err, vsphere.ErrBadCredentials),
		errors.Is(err, vsphere.ErrUntrustedCertificate),
		errors.Is(err, vsphere.ErrVMNotFound),
		errors.Is(err, vsphere.ErrNotFound),
		errors.Is(err, vsphere.ErrShutdownTimeout),
		errors.Is(err, vsphere.ErrChangeTracking),
		errors.Is(err, ErrPoweredOn),
		errors.Is(err, ErrUnsupportedVM),
		errors.Is(err, ErrGuestConversion),
		errors.Is(err, ErrBootCheck),
		errors.Is(err, ErrHook), // the hook's own retries are spent
		errors.Is(err, transfer.ErrVDDKUnavailable),
		errors.Is(err, transfer.ErrSourceAccess),
		errors.Is(err, transfer.ErrMethodUnavailable),
		errors.Is(err, transfer.ErrUnsupportedDisk),
		errors.Is(err, transfer.ErrBadDescriptor),
		errors.Is(err, libvirt.ErrDomainExists),
		errors.Is(err, libvirt.ErrInvalidSpec),
		errors.Is(err, libvirt.ErrFirmwareMissing):
		return err
	case errors.Is(err, vsphere.ErrUnreachable),
		errors.Is(err, vsphere.ErrHostBusy), // its NFC service is full: later, or another host's turn
		errors.Is(err, transfer.ErrSource),
		errors.Is(err, transfer.ErrBadStream), // a stream cut mid-grain looks malformed
		errors.Is(err, transfer.ErrNoSpace),
		errors.Is(err, transfer.ErrTool),
		errors.Is(err, ErrStorage),
		errors.Is(err, libvirt.ErrLibvirtUnreachable):
		return worker.Retryable(err)
	}
	// Anything else (a vSphere task fault, an unexpected SOAP error) is not known to be the
	// job's fault: one more attempt is cheap compared with a manual resubmit.
	return worker.Retryable(err)
}
