package vcsim

import (
	"fmt"

	"github.com/vmware/govmomi/vim25/types"
)

// SetExportBusy makes the next n ExportVm calls of the named VM fail as a busy ESXi host
// fails them: a SystemError whose message says "Failed to allocate", the NFC service out of
// resources. Clients are expected to ask again later.
func (s *Sim) SetExportBusy(name string, n int) error {
	v, ok := s.VM(name)
	if !ok {
		return fmt.Errorf("vcsim: no VM named %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exportBusy == nil {
		s.exportBusy = map[string]int{}
	}
	s.exportBusy[v.Moref] = n
	return nil
}

// takeBusy consumes one busy refusal of the VM, if any is left.
func (s *Sim) takeBusy(moref string) types.BaseMethodFault {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exportBusy[moref] <= 0 {
		return nil
	}
	s.exportBusy[moref]--
	return &types.SystemError{Reason: "Failed to allocate memory for NFC export session: host busy"}
}
