package dicomweb

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestReadAhead: a part read ahead yields its bytes, a blob shorter or
// longer than its record fails the copy instead of passing as complete, and
// Close gives its memory back to the budget once, however often it is called.
func TestReadAhead(t *testing.T) {
	const size = 1000
	data := bytes.Repeat([]byte{7}, size+1)
	for _, tt := range []struct {
		name    string
		stored  int
		wantErr error
	}{
		{"exact", size, nil},
		{"shorter", size - 1, io.ErrUnexpectedEOF},
		{"longer", size + 1, io.ErrUnexpectedEOF},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if !readAheadBudget.TryAcquire(readAheadSize(size)) {
				t.Fatal("budget spent before the test")
			}
			body := readAhead(io.NopCloser(bytes.NewReader(data[:tt.stored])), size)
			got, err := io.ReadAll(body)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ReadAll error = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && !bytes.Equal(got, data[:size]) {
				t.Fatalf("read %d bytes, want the %d stored", len(got), size)
			}
			body.Close()
			body.Close()
			if !readAheadBudget.TryAcquire(readAheadMaxMemory) {
				t.Fatal("budget not given back by Close (or given back twice and then spent)")
			}
			readAheadBudget.Release(readAheadMaxMemory)
		})
	}
}
