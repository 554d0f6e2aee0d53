package transfer

import "errors"

// Sentinel errors. Callers test them with errors.Is; every error this package returns wraps at
// most one of them plus the detail an operator needs (which disk, which tool, what is missing).
var (
	// ErrNoSpace: the target filesystem filled up. The partial output has been removed.
	ErrNoSpace = errors.New("no space left on device")

	// ErrVDDKUnavailable: the vddk method was asked for on a host where VMware's VDDK is
	// not installed, does not load, or cannot reach the disks (no usable transport mode).
	// The message says which, and how to fix it.
	ErrVDDKUnavailable = errors.New("vddk transfer unavailable")

	// ErrMethodUnavailable: a method was asked for whose host tools are missing.
	ErrMethodUnavailable = errors.New("transfer method unavailable on this host")

	// ErrUnsupportedDisk: the source disk is of a kind the chosen method cannot read (a delta
	// disk or sparse extent over https, a non stream-optimized VMDK over nfc, ...).
	ErrUnsupportedDisk = errors.New("unsupported source disk")

	// ErrBadDescriptor: the text VMDK descriptor could not be parsed.
	ErrBadDescriptor = errors.New("invalid vmdk descriptor")

	// ErrBadStream: the stream-optimized VMDK is malformed or truncated.
	ErrBadStream = errors.New("invalid stream-optimized vmdk")

	// ErrSource: the source server refused or failed a request (HTTP status, TLS, connection),
	// including after the retries of the retry filter were used up.
	ErrSource = errors.New("source read failed")

	// ErrSourceAccess: the source refused the job's credentials or does not match its
	// certificate thumbprint. Another attempt would fail the same way.
	ErrSourceAccess = errors.New("source refused access")

	// ErrTool: a host tool (qemu-img, nbdkit, qemu-nbd) failed for a reason not covered above.
	ErrTool = errors.New("conversion tool failed")
)
