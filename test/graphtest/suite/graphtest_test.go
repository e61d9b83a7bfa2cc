// Package suite runs moby 20.10's graph driver test suite
// (daemon/graphdriver/graphtest, the cases overlay2's own overlay_test.go
// runs) against a legacy graph driver plugin, loaded exactly as dockerd 20.10
// loads one: graphdriver.New(name, plugin.NewStore(), Options{...,
// ExperimentalEnabled: true}) -> the plugin store's v1 fallback
// (pkg/plugins.Get, discovery of /run/docker/plugins/<name>.sock,
// Plugin.Activate) -> graphdriver's plugin proxy (proxy.go) -> Init(root/<name>).
//
// graphtest itself calls graphdriver.GetDriver(name, nil, ...) with no plugin
// getter, so the suite is given a registered driver name ("graphtest-proxy")
// whose init function does the dockerd-style plugin load above.
//
// Run as root (the test process reads the layers the plugin mounts):
//
//	graphtest.test -plugin NAME -test.v -test.bench . -test.benchtime 1x -test.cpu 1
//
// The benchmarks run once each (-test.benchtime 1x) as functional cases: each
// fails on any driver error, as in overlay2's package.
package suite

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/docker/docker/daemon/graphdriver"
	"github.com/docker/docker/daemon/graphdriver/graphtest"
	"github.com/docker/docker/pkg/idtools"
	"github.com/docker/docker/plugin"
)

const proxyDriver = "graphtest-proxy"

var pluginName = flag.String("plugin", "", "name of the legacy graph driver plugin (socket /run/docker/plugins/NAME.sock)")

func init() {
	if err := graphdriver.Register(proxyDriver, initPluginDriver); err != nil {
		panic(err)
	}
}

// initPluginDriver is what dockerd's layer store does with "storage-driver": NAME:
// the home graphtest gives us plays dockerd's data root.
func initPluginDriver(home string, options []string, uidMaps, gidMaps []idtools.IDMap) (graphdriver.Driver, error) {
	if *pluginName == "" {
		return nil, fmt.Errorf("-plugin NAME is required")
	}
	if err := os.MkdirAll(home, 0o710); err != nil {
		return nil, err
	}
	d, err := graphdriver.New(*pluginName, plugin.NewStore(), graphdriver.Options{
		Root:                home,
		DriverOptions:       options,
		UIDMaps:             uidMaps,
		GIDMaps:             gidMaps,
		ExperimentalEnabled: true,
	})
	if err != nil {
		// graphdriver.GetDriver turns every plugin error into ErrNotSupported,
		// which graphtest would report as a skip: make it a failure instead.
		return nil, fmt.Errorf("loading graph driver plugin %q (home %s): %v (see the plugin's log)", *pluginName, filepath.Join(home, *pluginName), err)
	}
	return d, nil
}

func TestMain(m *testing.M) {
	flag.Parse()
	if *pluginName == "" {
		fmt.Fprintln(os.Stderr, "graphtest: -plugin NAME is required")
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// The cases of moby 20.10's daemon/graphdriver/overlay2/overlay_test.go, in its order.

func TestSetup(t *testing.T) {
	graphtest.GetDriver(t, proxyDriver)
}

func TestCreateEmpty(t *testing.T) {
	graphtest.DriverTestCreateEmpty(t, proxyDriver)
}

func TestCreateBase(t *testing.T) {
	graphtest.DriverTestCreateBase(t, proxyDriver)
}

func TestCreateSnap(t *testing.T) {
	graphtest.DriverTestCreateSnap(t, proxyDriver)
}

func Test128LayerRead(t *testing.T) {
	graphtest.DriverTestDeepLayerRead(t, 128, proxyDriver)
}

func TestDiffApply10Files(t *testing.T) {
	graphtest.DriverTestDiffApply(t, 10, proxyDriver)
}

func TestChanges(t *testing.T) {
	graphtest.DriverTestChanges(t, proxyDriver)
}

func BenchmarkExists(b *testing.B) {
	graphtest.DriverBenchExists(b, proxyDriver)
}

func BenchmarkGetEmpty(b *testing.B) {
	graphtest.DriverBenchGetEmpty(b, proxyDriver)
}

func BenchmarkDiffBase(b *testing.B) {
	graphtest.DriverBenchDiffBase(b, proxyDriver)
}

func BenchmarkDiffSmallUpper(b *testing.B) {
	graphtest.DriverBenchDiffN(b, 10, 10, proxyDriver)
}

func BenchmarkDiff10KFileUpper(b *testing.B) {
	graphtest.DriverBenchDiffN(b, 10, 10000, proxyDriver)
}

func BenchmarkDiff10KFilesBottom(b *testing.B) {
	graphtest.DriverBenchDiffN(b, 10000, 10, proxyDriver)
}

func BenchmarkDiffApply100(b *testing.B) {
	graphtest.DriverBenchDiffApplyN(b, 100, proxyDriver)
}

func BenchmarkDiff20Layers(b *testing.B) {
	graphtest.DriverBenchDeepLayerDiff(b, 20, proxyDriver)
}

func BenchmarkRead20Layers(b *testing.B) {
	graphtest.DriverBenchDeepLayerRead(b, 20, proxyDriver)
}
