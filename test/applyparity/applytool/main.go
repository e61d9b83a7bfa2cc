// applytool applies an uncompressed OCI layer tar onto a directory with
// containerd's own archive.Apply (containerd 1.6, Debian's sources), so that
// test/tar/apply-parity.test.ts can compare our extractor with it.
//
//	applytool [-whiteouts overlay|apply] [-parent DIR]... DEST [LAYER.tar]
//
// -whiteouts overlay: archive.WithConvertWhiteout(archive.OverlayConvertWhiteout),
// what containerd's overlay snapshotter's applier uses (char 0/0 whiteouts,
// trusted.overlay.opaque=y); apply (default): archive.Apply's default applier,
// which deletes whiteout targets (containerd's applier for plain directories).
// -parent: archive.WithParents (lower dirs whose attributes implicit parents copy).
// The layer is read from stdin when no file is given. Prints the applied size.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containerd/containerd/archive"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	whiteouts := flag.String("whiteouts", "apply", "overlay or apply")
	var parents multi
	flag.Var(&parents, "parent", "lower directory for archive.WithParents (repeatable)")
	flag.Parse()
	if flag.NArg() < 1 || flag.NArg() > 2 {
		fmt.Fprintln(os.Stderr, "usage: applytool [-whiteouts overlay|apply] [-parent DIR]... DEST [LAYER.tar]")
		os.Exit(2)
	}
	var opts []archive.ApplyOpt
	switch *whiteouts {
	case "overlay":
		opts = append(opts, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout))
	case "apply":
	default:
		fmt.Fprintf(os.Stderr, "applytool: -whiteouts must be overlay or apply, not %q\n", *whiteouts)
		os.Exit(2)
	}
	if len(parents) > 0 {
		opts = append(opts, archive.WithParents(parents))
	}
	var r io.Reader = os.Stdin
	if flag.NArg() == 2 {
		f, err := os.Open(flag.Arg(1))
		if err != nil {
			fmt.Fprintln(os.Stderr, "applytool:", err)
			os.Exit(1)
		}
		defer f.Close()
		r = f
	}
	n, err := archive.Apply(context.Background(), flag.Arg(0), r, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "applytool:", err)
		os.Exit(1)
	}
	fmt.Println(n)
}
