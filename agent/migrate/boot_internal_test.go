package migrate

import "testing"

func TestBootVerdict(t *testing.T) {
	for _, tc := range []struct {
		name     string
		console  string
		state    bootState
		evidence string
	}{
		{name: "login prompt", console: "[  OK  ] Reached target multi-user.target.\n\nDebian GNU/Linux 12 hsxguest ttyS0\n\nhsxguest login: ",
			state: bootUp, evidence: "hsxguest login:"},
		{name: "prompt after a screen clear and colours", console: "\x1b[0;32m  OK  \x1b[0m] Started getty\n\x1b[H\x1b[2Jweb-01 login:",
			state: bootUp, evidence: "web-01 login:"},
		{name: "logind starting is not a prompt", console: "         Starting systemd-logind.service - User Login Management...\n",
			state: booting},
		{name: "still booting", console: "[    2.1] Run /init as init process\nLoading, please wait...\n", state: booting},
		{name: "no driver for the root disk", console: "Begin: Waiting for root file system ... done\nGave up waiting for root file system device.  Common problems:\n" +
			" - Boot args (cat /proc/cmdline)\nALERT!  /dev/sda1 does not exist.  Dropping to a shell!\n\n(initramfs) ",
			state: bootFailed, evidence: "the initramfs did not find the root disk (no driver for its bus?)"},
		{name: "kernel panic", console: "[    3.0] VFS: Unable to mount root fs on unknown-block(0,0)\n[    3.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
			state: bootFailed, evidence: "the kernel panicked"},
		{name: "emergency mode (a stale fstab)", console: "[ TIME ] Timed out waiting for device dev-sda1.device\nYou are in emergency mode. After logging in, type \"journalctl -xb\"\n",
			state: bootFailed, evidence: "systemd entered emergency mode"},
		{name: "a prompt after an earlier failure wins (the newest line counts)", console: "Kernel panic - not syncing\nrebooting\nhost login: ",
			state: bootUp, evidence: "host login:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, ev := bootVerdict(tc.console)
			if st != tc.state || ev != tc.evidence {
				t.Errorf("got %v %q, want %v %q", st, ev, tc.state, tc.evidence)
			}
		})
	}
}
