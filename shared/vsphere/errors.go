// Package vsphere is the project's vCenter/ESXi client: connect with a clear trust decision,
// find VMs and read their hardware, change power state, remove CD-ROMs, snapshot, export
// (HttpNfcLease) and build authenticated datastore URLs. The agent's migration pipeline and
// the controller's VM discovery API use it; it wraps govmomi.
//
// Errors wrap the sentinels below with %w; messages never contain a password or a session
// cookie.
package vsphere

import "errors"

var (
	// ErrUntrustedCertificate: the server's TLS certificate is neither valid for its name
	// nor pinned. The message says the fix (source.insecure or source.thumbprint) and shows
	// the server's thumbprint.
	ErrUntrustedCertificate = errors.New("untrusted vCenter certificate")
	// ErrBadCredentials: the server refused the user name and password.
	ErrBadCredentials = errors.New("bad vCenter credentials")
	// ErrUnreachable: no TLS/HTTP connection could be made to the server.
	ErrUnreachable = errors.New("vCenter unreachable")
	// ErrVMNotFound: no VM at the given inventory path.
	ErrVMNotFound = errors.New("VM not found")
	// ErrAmbiguous: an inventory path (or glob) names several VMs where one is needed.
	ErrAmbiguous = errors.New("path matches several VMs")
	// ErrNotFound: another inventory object (datacenter, datastore) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrShutdownTimeout: the guest did not power off within the shutdown timeout.
	ErrShutdownTimeout = errors.New("guest shutdown timed out")
)
