package suite

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/docker/docker/daemon/graphdriver/graphtest"
	"github.com/docker/docker/pkg/archive"
)

// Not in graphtest: Changes, DiffSize and Diff of a layer against a layer
// other than its parent (its grandparent, and ""), checked against moby's own
// reference, archive.ChangesDirs / archive.ChangesSize on the mounted views
// (what overlay2's fallback, NaiveDiffDriver, computes). Runs between Setup
// and Teardown on the shared driver (go test runs files in name order:
// graphtest_test.go, naive_test.go, teardown_test.go).
func TestNaiveDiffOtherParent(t *testing.T) {
	d := graphtest.GetDriver(t, proxyDriver)
	defer graphtest.PutDriver(t)

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	edit := func(id string, f func(root string)) {
		t.Helper()
		fs, err := d.Get(id, "")
		must(err)
		f(fs.Path())
		must(d.Put(id))
	}
	write := func(root, name, content string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(root, name)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, []byte(content), mode))
		must(os.Chmod(p, mode))
	}
	base, mid, top, again := "naive-base", "naive-mid", "naive-top", "naive-again"
	must(d.Create(base, "", nil))
	edit(base, func(r string) {
		write(r, "a", "a0", 0o644)
		write(r, "d/x", "x0", 0o644)
		write(r, "d/y", "y0", 0o644)
		write(r, "del", "gone later", 0o644)
		write(r, "keep/k", "same", 0o600)
		must(os.Symlink("a", filepath.Join(r, "ln")))
	})
	must(d.Create(mid, base, nil))
	edit(mid, func(r string) {
		write(r, "a", "a1-longer", 0o644)
		write(r, "b", "b1", 0o755)
		must(os.Remove(filepath.Join(r, "d/x")))
	})
	must(d.Create(top, mid, nil))
	edit(top, func(r string) {
		write(r, "c/deep/c", "c2", 0o644)
		must(os.Remove(filepath.Join(r, "del")))
		write(r, "d/y", "y2", 0o600)
		must(os.RemoveAll(filepath.Join(r, "ln")))
		must(os.Symlink("b", filepath.Join(r, "ln")))
	})
	defer func() {
		for _, id := range []string{again, top, mid, base} {
			if d.Exists(id) {
				if err := d.Remove(id); err != nil {
					t.Errorf("Remove %s: %v", id, err)
				}
			}
		}
	}()

	topFs, err := d.Get(top, "")
	must(err)
	defer d.Put(top)
	baseFs, err := d.Get(base, "")
	must(err)
	defer d.Put(base)

	for _, parent := range []string{base, ""} {
		parentView := ""
		if parent != "" {
			parentView = baseFs.Path()
		}
		want, err := archive.ChangesDirs(topFs.Path(), parentView)
		must(err)
		got, err := d.Changes(top, parent)
		must(err)
		if w, g := changeSet(want), changeSet(got); w != g {
			t.Errorf("Changes(top, %q):\n got %s\nwant %s (archive.ChangesDirs)", parent, g, w)
		}
		size, err := d.DiffSize(top, parent)
		must(err)
		if wantSize := archive.ChangesSize(topFs.Path(), want); size != wantSize {
			t.Errorf("DiffSize(top, %q) = %d, want %d (archive.ChangesSize)", parent, size, wantSize)
		}
	}

	// Diff(top, base) applied on base gives top's view again
	arch, err := d.Diff(top, base)
	must(err)
	var buf bytes.Buffer
	_, err = buf.ReadFrom(arch)
	must(err)
	must(arch.Close())
	must(d.Create(again, base, nil))
	_, err = d.ApplyDiff(again, base, bytes.NewReader(buf.Bytes()))
	must(err)
	againFs, err := d.Get(again, "")
	must(err)
	defer d.Put(again)
	rest, err := archive.ChangesDirs(againFs.Path(), topFs.Path())
	must(err)
	if len(rest) != 0 {
		t.Errorf("base + Diff(top, base) differs from top: %s", changeSet(rest))
	}
}

func changeSet(cs []archive.Change) string {
	s := make([]string, 0, len(cs))
	for _, c := range cs {
		s = append(s, fmt.Sprintf("%s %s", c.Kind, c.Path))
	}
	sort.Strings(s)
	return fmt.Sprint(s)
}
