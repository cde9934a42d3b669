package dicomweb

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dicom-gateway/gateway/client"
	"github.com/dicom-gateway/gateway/gateway"
	"github.com/dicom-gateway/gateway/storage/filesystem"
)

func rec(sop string, size int64) *gateway.InstanceRecord {
	return &gateway.InstanceRecord{StudyInstanceUID: "1.2.3", SeriesInstanceUID: "1.2.3.1", SOPInstanceUID: sop, Size: size}
}

// TestBatches: requests stay under max bytes and max count; an instance
// larger than the bound travels alone.
func TestBatches(t *testing.T) {
	in := []*gateway.InstanceRecord{rec("1", 40), rec("2", 40), rec("3", 40), rec("4", 500), rec("5", 10), rec("6", 10), rec("7", 10)}
	var got [][]string
	for _, b := range batches(in, 100, 2) {
		var sops []string
		for _, r := range b {
			sops = append(sops, r.SOPInstanceUID)
		}
		got = append(got, sops)
	}
	want := [][]string{{"1", "2"}, {"3"}, {"4"}, {"5", "6"}, {"7"}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("batches = %v, want %v", got, want)
	}
}

// TestRequestBytes: a study is cut so that each parallel request gets about
// three, within [minRequestBytes, the peer's bound].
func TestRequestBytes(t *testing.T) {
	for _, tt := range []struct {
		total    int64
		parallel int
		max      int64
		want     int64
	}{
		{total: 184 << 20, parallel: 4, max: 64 << 20, want: (184 << 20) / 12}, // the 4 CT studies
		{total: 10 << 30, parallel: 4, max: 64 << 20, want: 64 << 20},          // a big study: the peer's bound
		{total: 20 << 20, parallel: 4, max: 64 << 20, want: minRequestBytes},   // a small one: not below the floor
		{total: 184 << 20, parallel: 4, max: 20 << 10, want: 20 << 10},         // a peer that wants small requests
		{total: 184 << 20, parallel: 0, max: 64 << 20, want: (184 << 20) / 3},
	} {
		if got := requestBytes(tt.total, tt.parallel, tt.max); got != tt.want {
			t.Errorf("requestBytes(%d, %d, %d) = %d, want %d", tt.total, tt.parallel, tt.max, got, tt.want)
		}
	}
}

// TestMultipartLengthIsExact: the Content-Length computed up front equals
// the body the client streams from blob storage, and the body parses back into the instances;
// a blob whose hash differs from the index is refused as a local error.
func TestMultipartLengthIsExact(t *testing.T) {
	blobs, err := filesystem.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer blobs.Close()
	stored := map[string][]byte{}
	var batch []*gateway.InstanceRecord
	for i, size := range []int{0, 1, 1000, 70000} {
		r := rec("1.2.3.1."+string(rune('1'+i)), int64(size))
		data := bytes.Repeat([]byte{byte(i + 1)}, size)
		sum := sha256.Sum256(data)
		r.SHA256 = hex.EncodeToString(sum[:])
		if _, err := blobs.Put(t.Context(), r.Key(), bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		stored[r.Key()] = data
		batch = append(batch, r)
	}
	// A receiver that keeps what it was sent in full. The upload the
	// sender abandons (the corrupt blob below) may still be read by its
	// handler while the next one arrives: it is not kept, and the two
	// handlers do not share got unguarded.
	var (
		mu  sync.Mutex
		got struct {
			contentLength int64
			contentType   string
			body          []byte
		}
	)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		mu.Lock()
		got.contentLength, got.contentType, got.body = r.ContentLength, r.Header.Get("Content-Type"), body
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	defer ts.Close()
	c := NewClient(blobs)
	checkSum := true
	send := func() error {
		parts, release := c.blobParts(t.Context(), batch, gateway.SendHeader{}, checkSum)
		defer release()
		_, err := (&client.Client{DICOMweb: ts.URL}).Store(t.Context(), "", parts, nil)
		return err
	}
	received := func() (contentLength int64, contentType string, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		return got.contentLength, got.contentType, got.body
	}
	if err := send(); err != nil {
		t.Fatal(err)
	}
	contentLength, contentType, body := received()
	if int64(len(body)) != contentLength {
		t.Fatalf("body is %d bytes, Content-Length said %d", len(body), contentLength)
	}
	_, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		t.Fatal(err)
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	for i := 0; ; i++ {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			if i != len(batch) {
				t.Fatalf("%d parts, want %d", i, len(batch))
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(p)
		if !bytes.Equal(data, stored[batch[i].Key()]) {
			t.Errorf("part %d differs", i)
		}
		// Each part declares its SHA-256 for the receiver to check.
		if d, want := p.Header.Get(client.HeaderContentDigest), client.ContentDigestSHA256(batch[i].SHA256); d != want || d == "" {
			t.Errorf("part %d Content-Digest %q, want %q", i, d, want)
		}
	}

	batch[2].SHA256 = strings.Repeat("0", 64)
	err = send()
	if _, ok := errors.AsType[*localError](err); !ok || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("sending a corrupt blob = %v, want a local corruption error", err)
	}
	// Without the local check (the peer checks Content-Digest), the bytes
	// go out with the recorded digest, for the peer to refuse.
	checkSum = false
	if err := send(); err != nil {
		t.Fatalf("sending without the local check = %v", err)
	}
	if _, _, body := received(); !bytes.Contains(body, []byte(client.ContentDigestSHA256(batch[2].SHA256))) {
		t.Fatal("the part was not sent with its recorded digest")
	}
}

// TestParseStowResponse reads referenced and failed instances; unmentioned
// ones are retryable, and out-of-resources refusals too.
func TestParseStowResponse(t *testing.T) {
	body := `{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1"]}}]},
	 "00081198":{"vr":"SQ","Value":[
	   {"00081155":{"vr":"UI","Value":["2"]},"00081197":{"vr":"US","Value":[272]},"00000902":{"vr":"LO","Value":["Content-Digest mismatch"]}},
	   {"00081155":{"vr":"UI","Value":["3"]},"00081197":{"vr":"US","Value":[42752]}}]}}`
	res, err := parseStowResponse(&client.StoreResponse{StatusCode: http.StatusAccepted, Body: []byte(body)}, []*gateway.InstanceRecord{rec("1", 10), rec("2", 10), rec("3", 10), rec("4", 10)})
	if err != nil {
		t.Fatal(err)
	}
	want := []gateway.SendResult{
		{SOPInstanceUID: "1", OK: true, Bytes: 10},
		{SOPInstanceUID: "2", Reason: "processing failure (0x0110) «Content-Digest mismatch»", ReasonCode: 0x0110},
		{SOPInstanceUID: "3", Reason: "out of resources (0xA700)", ReasonCode: 0xA700, Retryable: true},
		{SOPInstanceUID: "4", Reason: "not mentioned in the peer's answer", Retryable: true},
	}
	if !slices.Equal(res, want) {
		t.Fatalf("results\n%+v\nwant\n%+v", res, want)
	}
	res, err = parseStowResponse(&client.StoreResponse{StatusCode: http.StatusOK}, []*gateway.InstanceRecord{rec("1", 10)})
	if err != nil || len(res) != 1 || !res[0].OK {
		t.Fatalf("empty 200 answer = %+v, %v; want all stored", res, err)
	}
	if _, err := parseStowResponse(&client.StoreResponse{StatusCode: http.StatusAccepted, Body: []byte("<html>")}, nil); err == nil {
		t.Fatal("an HTML answer parsed")
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tt := range []struct {
		v    string
		want time.Duration
	}{
		{"", 0}, {"7", 7 * time.Second}, {"-1", 0}, {"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
	} {
		if got := retryAfter(tt.v, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.v, got, tt.want)
		}
	}
}

func TestAdminURL(t *testing.T) {
	for _, tt := range []struct {
		peer gateway.Peer
		want string
		ok   bool
	}{
		{gateway.Peer{URL: "http://h:8081/dicomweb"}, "http://h:8081/api/v1", true},
		{gateway.Peer{URL: "https://h/gw/dicomweb/"}, "https://h/gw/api/v1", true},
		{gateway.Peer{URL: "http://orthanc:8042/dicom-web"}, "", false},
		{gateway.Peer{URL: "http://orthanc:8042/dicom-web", AdminURL: "http://h/api/v1/"}, "http://h/api/v1", true},
	} {
		got, err := AdminURL(tt.peer)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("AdminURL(%s) = %q, %v; want %q ok=%v", tt.peer.URL, got, err, tt.want, tt.ok)
		}
	}
}

// TestMalformedAnswerIsThePeersWords: net/http quotes a malformed answer's
// own bytes in its error (here a header line without a colon, where a
// broken peer put a patient's name): the error that becomes the transfer's
// last_error marks them as the peer's words, so the log withholds them.
func TestMalformedAnswerIsThePeersWords(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var served sync.WaitGroup
	t.Cleanup(func() { ln.Close(); served.Wait() })
	served.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			served.Go(func() {
				defer conn.Close()
				_, _ = conn.Read(make([]byte, 4096))
				_, _ = conn.Write([]byte("HTTP/1.1 500 Internal\r\nQUIXOTE^ALONSO MRN 4417\r\n\r\n"))
			})
		}
	})
	peer := gateway.Peer{Name: "surrey", URL: "http://" + ln.Addr().String() + "/dicomweb"}
	_, err = NewClient(nil).Verify(t.Context(), peer, "1.2.3", []*gateway.InstanceRecord{rec("1.2.3.1.1", 10)})
	if err == nil || !strings.Contains(err.Error(), "QUIXOTE^ALONSO") {
		t.Fatalf("Verify against a malformed answer: %v, want the transport's error", err)
	}
	if logged := gateway.RedactPeerWords(err.Error()); strings.Contains(logged, "QUIXOTE") || !strings.Contains(logged, "querying http://") {
		t.Errorf("as logged: %q, want the peer's bytes withheld and the rest kept", logged)
	}
}
