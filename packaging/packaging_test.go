package packaging_test

import (
	"bytes"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hypersdk/hypersdk/agent"
	"github.com/hypersdk/hypersdk/controller"
	"github.com/hypersdk/hypersdk/packaging"
	"github.com/hypersdk/hypersdk/test/harness"
)

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

func TestPackageVersion(t *testing.T) {
	cases := map[string]string{
		"v1.2.0":            "1.2.0",
		"1.2.0":             "1.2.0",
		"v1.2.0-3-gabc1234": "1.2.0+git3.gabc1234",
		"0.1.0-dev":         "0.1.0~dev",
		"abc1234-dirty":     "0.0.0~git.abc1234.dirty",
		"88c55fe-dirty":     "0.0.0~git.88c55fe.dirty",
		"1234567":           "0.0.0~git.1234567",
		"v2.0":              "2.0",
		"":                  "0.0.0",
	}
	for in, want := range cases {
		if got := packaging.PackageVersion(in); got != want {
			t.Fatalf("PackageVersion(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestShippedConfigs: the configuration files the packages install load without error
// (unknown keys are errors) and hold what the units expect.
func TestShippedConfigs(t *testing.T) {
	root := repoRoot(t)
	cc, err := controller.LoadConfig(filepath.Join(root, "packaging/config/controller.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cc.Validate(); err != nil {
		t.Fatal(err)
	}
	if cc.DataDir() != "/var/lib/hypersdk/controller" {
		t.Fatalf("controller data dir %q is outside the unit's ReadWritePaths", cc.DataDir())
	}
	ac, err := agent.LoadConfig(filepath.Join(root, "packaging/config/agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ac.Validate(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ac.StorageDir, "/var/lib/hypersdk/") {
		t.Fatalf("agent storage dir %q is outside the unit's ReadWritePaths", ac.StorageDir)
	}
}

// TestGuideConfigs: the YAML of the README's "High availability" guide loads with the
// daemons' strict loaders (a misspelt key in the guide would be an error on the machine).
func TestGuideConfigs(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, guide, ok := strings.Cut(string(b), "\n## High availability\n")
	if !ok {
		t.Fatal("README has no High availability section")
	}
	guide, _, _ = strings.Cut(guide, "\n## ")
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(guide, -1)
	seen := map[string]bool{}
	for _, m := range blocks {
		// The guide's placeholders become values of the right shape, so Validate checks
		// the guide's structure and not the placeholder.
		y := strings.NewReplacer(
			`token_sha256: "…"`, `token_sha256: "`+strings.Repeat("ab", 32)+`"`,
			`key: "…"`, `key: "`+base64.StdEncoding.EncodeToString(make([]byte, 32))+`"`,
			`join_token: "…"`, `join_token: "`+strings.Repeat("j", 32)+`"`,
			`"…"`, `"x"`,
		).Replace(m[1])
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.Contains(y, "database:"):
			seen["controller"] = true
			cfg, err := controller.LoadConfig(path)
			if err != nil {
				t.Fatalf("controller config of the guide: %v\n%s", err, y)
			}
			if len(cfg.Auth.Tokens) == 0 || !cfg.API.TLS.Enabled() || !cfg.ClusterTLSEnabled() || len(cfg.Gossip.Join) != 3 {
				t.Fatalf("the guide's controller config lost tokens, TLS, cluster TLS or gossip join: %+v", cfg)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("the guide's controller config: %v", err)
			}
		case strings.Contains(y, "controllers:"):
			seen["agent"] = true
			cfg, err := agent.LoadConfig(path)
			if err != nil {
				t.Fatalf("agent config of the guide: %v\n%s", err, y)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
		case strings.Contains(y, "scrape_configs:"):
			seen["prometheus"] = true
			checkPrometheusConfig(t, y)
		}
	}
	if len(seen) != 3 {
		t.Fatalf("guide YAML blocks found: %v", seen)
	}
}

// checkPrometheusConfig runs promtool on the guide's scrape config, its files (CA, token)
// created in a temp dir.
func checkPrometheusConfig(t *testing.T, y string) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Log("promtool not installed: the guide's scrape config is not checked")
		return
	}
	dir := t.TempDir()
	for _, f := range regexp.MustCompile(`/etc/prometheus/[\w.-]+`).FindAllString(y, -1) {
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(y, "/etc/prometheus/", dir+"/")), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "check", "config", path).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config of the guide's scrape config: %v\n%s", err, out)
	}
}

type built struct {
	deb, rpm map[string]string // package -> path
}

var (
	buildOnce sync.Once
	buildRes  built
	buildErr  error
)

// buildPackages builds the six packages once per test binary from the binaries of
// make build (bin/, or $HYPERSDK_BIN).
func buildPackages(t *testing.T) built {
	t.Helper()
	bin := harness.BinDir(t)
	for _, b := range []string{"hypersdk-agent", "hypersdk-controller", "hyperctl"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Skipf("%s/%s not built: run make build (make test does)", bin, b)
		}
	}
	buildOnce.Do(func() {
		out, err := os.MkdirTemp("", "hypersdk-packages-")
		if err != nil {
			buildErr = err
			return
		}
		start := time.Now()
		paths, err := packaging.Build(packaging.Options{RepoRoot: repoRoot(t), BinDir: bin, OutDir: out, Version: "v1.4.2-7-gdeadbee", FastCompression: true})
		t.Logf("built %d packages in %s", len(paths), time.Since(start).Round(time.Millisecond))
		buildRes, buildErr = built{deb: map[string]string{}, rpm: map[string]string{}}, err
		for _, p := range paths {
			name := filepath.Base(p)
			pkg := "hypersdk-agent"
			for _, n := range []string{"hypersdk-controller", "hypersdk-cli"} {
				if strings.HasPrefix(name, n) {
					pkg = n
				}
			}
			if strings.HasSuffix(p, ".deb") {
				buildRes.deb[pkg] = p
			} else {
				buildRes.rpm[pkg] = p
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildRes
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String() + errb.String()
}

func need(t *testing.T, tool string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s not installed: skipping", tool)
	}
}

func mustContain(t *testing.T, what, text string, items ...string) {
	t.Helper()
	for _, it := range items {
		if !strings.Contains(text, it) {
			t.Fatalf("%s lacks %q:\n%s", what, it, text)
		}
	}
}

// startsService matches a maintainer script command that starts a service (try-restart,
// which only restarts a running one on upgrade, is allowed; the messages are not commands).
var startsService = regexp.MustCompile(`(?m)^\s*(systemctl\s+(start|restart|reload-or-restart)\b|systemctl\s+enable\s+--now|deb-systemd-invoke\s+start|service\s+\S+\s+start)`)

func TestDeb(t *testing.T) {
	need(t, "dpkg-deb")
	b := buildPackages(t)
	cases := []struct {
		pkg     string
		files   []string
		absent  []string // owned by another package: installing both must not conflict
		depends []string
		fields  []string // other control fields
		conf    []string // nil: no conffiles and no maintainer scripts
	}{
		{
			pkg: "hypersdk-agent",
			files: []string{"./usr/bin/hypersdk-agent", "./lib/systemd/system/hypersdk-agent.service", "./etc/hypersdk/agent.yaml",
				"./etc/hypersdk/agent.env", "./var/lib/hypersdk/storage/", "./usr/share/doc/hypersdk-agent/README.md",
				"./etc/logrotate.d/hypersdk-agent", "./usr/share/doc/hypersdk-agent/storage-dir.conf"},
			absent:  []string{"./usr/bin/hyperctl"},
			depends: []string{"qemu-utils", "nbdkit", "libvirt0"},
			fields:  []string{"Suggests: guestfs-tools, hypersdk-cli"},
			conf:    []string{"/etc/hypersdk/agent.yaml", "/etc/hypersdk/agent.env"},
		},
		{
			pkg: "hypersdk-controller",
			files: []string{"./usr/bin/hypersdk-controller", "./lib/systemd/system/hypersdk-controller.service",
				"./etc/hypersdk/controller.yaml", "./var/lib/hypersdk/controller/", "./usr/share/hypersdk/grafana/hypersdk.json"},
			absent:  []string{"./usr/bin/hyperctl"},
			depends: []string{"libc6"},
			fields:  []string{"Recommends: hypersdk-cli"},
			conf:    []string{"/etc/hypersdk/controller.yaml"},
		},
		{
			pkg:     "hypersdk-cli",
			files:   []string{"./usr/bin/hyperctl", "./usr/share/doc/hypersdk-cli/README.md"},
			absent:  []string{"./usr/bin/hypersdk-", "./lib/systemd/", "./etc/"},
			depends: []string{"libc6"},
			// Controllers before the split shipped /usr/bin/hyperctl: dpkg hands it over on upgrade.
			fields: []string{"Replaces: hypersdk-controller (<< 1.4.2+git7.gdeadbee)", "Breaks: hypersdk-controller (<< 1.4.2+git7.gdeadbee)"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.pkg, func(t *testing.T) {
			deb := b.deb[tc.pkg]
			if !strings.HasSuffix(deb, "_1.4.2+git7.gdeadbee-1_amd64.deb") {
				t.Fatalf("file name %s", deb)
			}
			listing := run(t, "dpkg-deb", "-c", deb)
			mustContain(t, "dpkg-deb -c", listing, tc.files...)
			for _, a := range tc.absent {
				if strings.Contains(listing, " "+a) {
					t.Fatalf("%s ships %s:\n%s", tc.pkg, a, listing)
				}
			}
			fields := run(t, "dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Depends", "Recommends", "Suggests", "Replaces", "Breaks", "Maintainer", "Description")
			mustContain(t, "control fields", fields, "Package: "+tc.pkg, "Version: 1.4.2+git7.gdeadbee-1", "Architecture: amd64")
			mustContain(t, "Depends", fields, tc.depends...)
			mustContain(t, "control fields", fields, tc.fields...)
			info := run(t, "dpkg-deb", "-I", deb)
			if tc.conf == nil {
				// A client only: nothing to configure, no user, no service.
				for _, script := range []string{"preinst", "postinst", "prerm", "postrm", "conffiles"} {
					if strings.Contains(info, " "+script) {
						t.Fatalf("%s has a %s:\n%s", tc.pkg, script, info)
					}
				}
				return
			}
			mustContain(t, "maintainer scripts", info, "preinst", "postinst", "prerm", "postrm", "conffiles")
			mustContain(t, "conffiles", run(t, "dpkg-deb", "-I", deb, "conffiles"), tc.conf...)
			postinst := run(t, "dpkg-deb", "-I", deb, "postinst")
			if startsService.MatchString(postinst) {
				t.Fatalf("postinst starts the service:\n%s", postinst)
			}
			mustContain(t, "postinst", postinst, "systemctl enable", "not started")
			switch tc.pkg {
			case "hypersdk-controller":
				// An upgrade of every controller at once must not restart them together.
				if strings.Contains(postinst, "try-restart") {
					t.Fatalf("controller postinst restarts the service on upgrade:\n%s", postinst)
				}
				mustContain(t, "postinst", postinst, "ONE AT A TIME")
			case "hypersdk-agent":
				mustContain(t, "postinst", postinst, "/etc/hypersdk/agent.unconfigured", "--check-config")
			}
			verifyUnits(t, deb)
		})
	}
}

// verifyUnits runs systemd-analyze verify on the package's unit, its ExecStart pointing
// into the extracted package (verify checks the binary is executable).
func verifyUnits(t *testing.T, deb string) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze not installed: units not verified")
		return
	}
	root := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, root)
	units, _ := filepath.Glob(filepath.Join(root, "lib/systemd/system/*.service"))
	if len(units) != 1 {
		t.Fatalf("want one unit, got %v", units)
	}
	b, err := os.ReadFile(units[0])
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	mustContain(t, "unit", unit, "Restart=on-failure", "User=hypersdk", "ProtectSystem=strict", "ReadWritePaths=/var/lib/hypersdk",
		"NoNewPrivileges=yes", "PrivateTmp=yes", "WantedBy=multi-user.target")
	if strings.Contains(deb, "hypersdk-agent_") {
		// Not started at boot until configured.
		mustContain(t, "agent unit", unit, "ConditionPathExists=!/etc/hypersdk/agent.unconfigured")
	}
	copyPath := filepath.Join(t.TempDir(), filepath.Base(units[0]))
	if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(unit, "/usr/bin/", root+"/usr/bin/")), 0o644); err != nil {
		t.Fatal(err)
	}
	// Warnings (an unknown or misspelt directive) do not fail verify: any output does here.
	out, err := exec.Command("systemd-analyze", "verify", copyPath).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", filepath.Base(units[0]), err, out)
	}
}

func TestRPM(t *testing.T) {
	need(t, "rpm")
	b := buildPackages(t)
	cases := []struct {
		pkg      string
		files    []string
		requires []string
		conf     []string
	}{
		{"hypersdk-agent", []string{"/usr/bin/hypersdk-agent", "/lib/systemd/system/hypersdk-agent.service", "/etc/hypersdk/agent.yaml", "/var/lib/hypersdk/storage"},
			[]string{"qemu-img", "nbdkit", "libvirt-libs"}, []string{"/etc/hypersdk/agent.yaml", "/etc/hypersdk/agent.env"}},
		{"hypersdk-controller", []string{"/usr/bin/hypersdk-controller", "/lib/systemd/system/hypersdk-controller.service",
			"/etc/hypersdk/controller.yaml", "/usr/share/hypersdk/grafana/hypersdk.json"},
			[]string{"glibc"}, []string{"/etc/hypersdk/controller.yaml"}},
		{"hypersdk-cli", []string{"/usr/bin/hyperctl", "/usr/share/doc/hypersdk-cli/README.md"}, []string{"glibc"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.pkg, func(t *testing.T) {
			p := b.rpm[tc.pkg]
			if !strings.HasSuffix(p, "-1.4.2+git7.gdeadbee-1.x86_64.rpm") {
				t.Fatalf("file name %s", p)
			}
			mustContain(t, "rpm -qpl", run(t, "rpm", "-qpl", p), tc.files...)
			mustContain(t, "rpm -qpR", run(t, "rpm", "-qpR", p), tc.requires...)
			mustContain(t, "rpm -qpi", run(t, "rpm", "-qpi", p), "Name        : "+tc.pkg, "Architecture: x86_64")
			switch tc.pkg {
			case "hypersdk-cli":
				if scripts := strings.TrimSpace(run(t, "rpm", "-qp", "--scripts", p)); scripts != "" {
					t.Fatalf("the cli package has scriptlets:\n%s", scripts)
				}
				mustContain(t, "rpm --conflicts", run(t, "rpm", "-qp", "--conflicts", p), "hypersdk-controller < 1.4.2+git7.gdeadbee")
				return
			case "hypersdk-controller":
				mustContain(t, "rpm --recommends", run(t, "rpm", "-qp", "--recommends", p), "hypersdk-cli")
			case "hypersdk-agent":
				mustContain(t, "rpm --suggests", run(t, "rpm", "-qp", "--suggests", p), "hypersdk-cli")
			}
			mustContain(t, "rpm -qpc", run(t, "rpm", "-qpc", p), tc.conf...)
			mustContain(t, "rpm --scripts", run(t, "rpm", "-qp", "--scripts", p), "preinstall", "postinstall", "preuninstall", "postuninstall", "useradd")
		})
	}
}

// lockInstall serializes the install test between concurrent test runs on this machine
// (dpkg has one database).
func lockInstall(t *testing.T) {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "hypersdk-package-install.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	})
}

// TestInstallAgentDeb installs the agent package with dpkg on this machine, runs the
// installed binary, checks what the post-install did (user, groups, dirs, permissions,
// unit enabled and not started), verifies the installed unit, and purges the package.
func TestInstallAgentDeb(t *testing.T) {
	need(t, "dpkg")
	if os.Geteuid() != 0 {
		t.Skip("installing a package needs root")
	}
	for _, dep := range []string{"qemu-utils", "nbdkit", "libvirt0"} {
		if exec.Command("dpkg", "-s", dep).Run() != nil {
			t.Skipf("%s is not installed (make setup installs it): dpkg -i would refuse the package", dep)
		}
	}
	b := buildPackages(t)
	lockInstall(t)
	if exec.Command("dpkg", "-s", "hypersdk-agent").Run() == nil {
		t.Skip("hypersdk-agent is installed on this machine already: not touching it")
	}
	if _, err := os.Stat("/usr/bin/hypersdk-agent"); err == nil {
		t.Skip("/usr/bin/hypersdk-agent exists outside a package: not overwriting it")
	}
	_, hadEtc := os.Stat("/etc/hypersdk")
	t.Cleanup(func() {
		// Whatever happened above, leave no package behind.
		_ = exec.Command("dpkg", "--purge", "hypersdk-agent").Run()
	})

	out := run(t, "dpkg", "-i", b.deb["hypersdk-agent"])
	mustContain(t, "dpkg -i output", out, "installed and enabled, but not started", "/etc/hypersdk/agent.yaml")
	if _, err := os.Stat("/etc/hypersdk/agent.unconfigured"); err != nil {
		t.Fatalf("first install left no agent.unconfigured marker (the unit would start with placeholders): %v", err)
	}

	version := run(t, "/usr/bin/hypersdk-agent", "--version")
	if !strings.HasPrefix(version, "hypersdk-agent ") {
		t.Fatalf("installed binary: %q", version)
	}
	mustContain(t, "id hypersdk", run(t, "id", "hypersdk"), "(hypersdk)")
	checks := []struct {
		path  string
		mode  os.FileMode
		owner string
	}{
		{"/var/lib/hypersdk/storage", 0o711 | os.ModeDir, "hypersdk"},
		{"/etc/hypersdk/agent.yaml", 0o640, "root"},
		{"/etc/hypersdk/agent.env", 0o640, "root"},
		{"/usr/bin/hypersdk-agent", 0o755, "root"},
	}
	for _, c := range checks {
		st, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != c.mode {
			t.Fatalf("%s: mode %v, want %v", c.path, st.Mode(), c.mode)
		}
		owner := strings.TrimSpace(run(t, "stat", "-c", "%U:%G", c.path))
		if !strings.HasPrefix(owner, c.owner+":") || (strings.HasPrefix(c.path, "/etc/") && owner != "root:hypersdk") {
			t.Fatalf("%s: owner %s", c.path, owner)
		}
	}
	wants := "/etc/systemd/system/multi-user.target.wants/hypersdk-agent.service"
	if _, err := os.Lstat(wants); err != nil {
		t.Fatalf("unit not enabled: %v", err)
	}
	// Only the installed binary counts: other tests run bin/hypersdk-agent at the same time.
	if out, err := exec.Command("pgrep", "-f", "^/usr/bin/hypersdk-agent").Output(); err == nil {
		t.Fatalf("the post-install started the agent: pids %s", out)
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		if out, err := exec.Command("systemd-analyze", "verify", "/lib/systemd/system/hypersdk-agent.service").CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Fatalf("systemd-analyze verify of the installed unit: %v\n%s", err, out)
		}
	}

	run(t, "dpkg", "--purge", "hypersdk-agent")
	for _, p := range []string{"/usr/bin/hypersdk-agent", "/lib/systemd/system/hypersdk-agent.service", "/etc/hypersdk/agent.yaml", wants} {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s is still there after dpkg --purge", p)
		}
	}
	if hadEtc != nil {
		if _, err := os.Stat("/etc/hypersdk"); err == nil {
			t.Fatal("/etc/hypersdk left behind by the purge")
		}
	}
}

// TestPackagesShareNoFile: no two packages own the same file (directories may be shared), so
// the controller, the agent and the cli install side by side on one host in any order.
func TestPackagesShareNoFile(t *testing.T) {
	need(t, "dpkg-deb")
	b := buildPackages(t)
	if len(b.deb) != 3 {
		t.Fatalf("want three .deb packages, got %v", b.deb)
	}
	owner := map[string]string{}
	for pkg, deb := range b.deb {
		for _, line := range strings.Split(strings.TrimSpace(run(t, "dpkg-deb", "-c", deb)), "\n") {
			f := strings.Fields(line)
			if len(f) < 6 || strings.HasPrefix(f[0], "d") {
				continue
			}
			path := f[5]
			if other, ok := owner[path]; ok {
				t.Fatalf("%s is in both %s and %s: installing both fails", path, other, pkg)
			}
			owner[path] = pkg
		}
	}
	if owner["./usr/bin/hyperctl"] != "hypersdk-cli" {
		t.Fatalf("/usr/bin/hyperctl is owned by %q", owner["./usr/bin/hyperctl"])
	}
}

// TestInstallCLIDeb installs the cli package alone with dpkg (an operator's laptop: none of
// the daemons' dependencies), runs the installed hyperctl, and purges the package.
func TestInstallCLIDeb(t *testing.T) {
	need(t, "dpkg")
	if os.Geteuid() != 0 {
		t.Skip("installing a package needs root")
	}
	b := buildPackages(t)
	lockInstall(t)
	for _, pkg := range []string{"hypersdk-cli", "hypersdk-controller"} {
		if exec.Command("dpkg", "-s", pkg).Run() == nil {
			t.Skipf("%s is installed on this machine already: not touching it", pkg)
		}
	}
	if _, err := os.Stat("/usr/bin/hyperctl"); err == nil {
		t.Skip("/usr/bin/hyperctl exists outside a package: not overwriting it")
	}
	_, hadEtc := os.Stat("/etc/hypersdk")
	t.Cleanup(func() { _ = exec.Command("dpkg", "--purge", "hypersdk-cli").Run() })

	run(t, "dpkg", "-i", b.deb["hypersdk-cli"])
	mustContain(t, "dpkg -L", run(t, "dpkg", "-L", "hypersdk-cli"), "/usr/bin/hyperctl", "/usr/share/doc/hypersdk-cli/README.md")
	st, err := os.Stat("/usr/bin/hyperctl")
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode() != 0o755 {
		t.Fatalf("/usr/bin/hyperctl mode %v", st.Mode())
	}
	// --help needs no controller and exits 0.
	mustContain(t, "hyperctl --help", run(t, "/usr/bin/hyperctl", "--help"), "hyperctl")
	if hadEtc != nil {
		if _, err := os.Stat("/etc/hypersdk"); err == nil {
			t.Fatal("the cli package created /etc/hypersdk")
		}
	}

	run(t, "dpkg", "--purge", "hypersdk-cli")
	for _, p := range []string{"/usr/bin/hyperctl", "/usr/share/doc/hypersdk-cli/README.md"} {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s is still there after dpkg --purge", p)
		}
	}
}
