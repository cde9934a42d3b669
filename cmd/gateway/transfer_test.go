package main

import (
	"bytes"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dicom-gateway/gateway/dicomweb"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/internal/synth"
	"github.com/dicom-gateway/gateway/storage/bolt"
	"github.com/dicom-gateway/gateway/storage/filesystem"
)

// TestTransferCLI drives gateway transfer create, list, show, cancel, retry
// and peers against a gateway's admin API (workers not running, so the
// transfer stays queued until cancelled).
func TestTransferCLI(t *testing.T) {
	dir := t.TempDir()
	blobs, err := filesystem.New(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	defer blobs.Close()
	db, err := bolt.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	index, err := bolt.NewIndex(db)
	if err != nil {
		t.Fatal(err)
	}
	q, err := bolt.NewQueue(db, gateway.QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr := &gateway.Transfers{Name: "hampshire", Queue: q, Index: index, Peers: []gateway.Peer{{Name: "surrey", URL: "http://127.0.0.1:1/dicomweb"}}}
	ingester := &gateway.Ingester{Blobs: blobs, Index: index}
	srv := dicomweb.New(dicomweb.Config{Services: gateway.NewServices(gateway.ServiceDeps{
		Name: "hampshire", Blobs: blobs, Index: index, Transfers: tr, Ingester: ingester})})
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	in := synth.Study(synth.StudySpec{Seed: 801})[0]
	if _, err := ingester.Store(t.Context(), in.Reader(), gateway.StoreOptions{}); err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := runTransfer(t.Context(), append(args, "--url", ts.URL), &out, &errOut)
		return out.String() + errOut.String(), err
	}
	out, err := run("create", "--study", in.StudyInstanceUID, "--to", "surrey", "--urgent")
	if err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	if !strings.Contains(out, "state        queued (priority urgent") {
		t.Fatalf("create printed:\n%s", out)
	}
	list, err := q.List(t.Context(), gateway.TransferFilter{})
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %v, %v", list, err)
	}
	id := list[0].ID
	if out, err = run("list", "--state", "queued"); err != nil || !strings.Contains(out, id) {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err = run("show", id, "--json"); err != nil || !strings.Contains(out, `"study_uid":"`+in.StudyInstanceUID+`"`) {
		t.Fatalf("show --json: %v\n%s", err, out)
	}
	if out, err = run("cancel", id); err != nil || !strings.Contains(out, "cancelled") {
		t.Fatalf("cancel: %v\n%s", err, out)
	}
	if _, err = run("cancel", id); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("second cancel: %v, want an HTTP 409 error", err)
	}
	if out, err = run("show", id, "--watch"); err != nil || !strings.Contains(out, "state        cancelled") {
		t.Fatalf("show --watch of an ended transfer: %v\n%s", err, out)
	}
	if out, err = run("retry", id); err != nil || !strings.Contains(out, "queued") {
		t.Fatalf("retry: %v\n%s", err, out)
	}
	if out, err = run("peers"); err != nil || !strings.Contains(out, "surrey") {
		t.Fatalf("peers: %v\n%s", err, out)
	}
	if _, err = run("create", "--study", in.StudyInstanceUID); err == nil {
		t.Fatal("create without --to succeeded")
	}
}
