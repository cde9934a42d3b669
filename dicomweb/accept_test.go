package dicomweb

import (
	"testing"
)

// TestNegotiate checks PS3.18 8.7 Accept negotiation for the WADO-RS
// resources: q-values, several media types in one header, wildcards,
// transfer-syntax=* and the stored syntax, and the combined lists viewers
// send.
func TestNegotiate(t *testing.T) {
	const (
		jpegLS   = "1.2.840.10008.1.2.4.80"
		jpegBase = "1.2.840.10008.1.2.4.50"
		explicit = "1.2.840.10008.1.2.1"
		implicit = "1.2.840.10008.1.2"
		rle      = "1.2.840.10008.1.2.5"
	)
	ohifFrames := `multipart/related; type=application/octet-stream; transfer-syntax=*`
	ohifCombined := `multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80, ` +
		`multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50, ` +
		`multipart/related; type="application/octet-stream"; transfer-syntax=*;q=0.5`
	for _, tt := range []struct {
		name      string
		accept    []string // nil: no header
		offers    []offer
		ok        bool
		multipart bool
		mediaType string
		ts        string
	}{
		{"no header: default", nil, instanceOffers(explicit, true), true, true, mediaDICOM, explicit},
		{"star star", []string{"*/*"}, instanceOffers(jpegLS, false), true, true, mediaDICOM, jpegLS},
		{"multipart dicom ts star", []string{`multipart/related; type="application/dicom"; transfer-syntax=*`}, instanceOffers(jpegLS, false), true, true, mediaDICOM, jpegLS},
		{"multipart dicom unquoted type", []string{`multipart/related; type=application/dicom`}, instanceOffers(jpegLS, false), true, true, mediaDICOM, jpegLS},
		{"stored syntax named", []string{`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80`}, instanceOffers(jpegLS, false), true, true, mediaDICOM, jpegLS},
		{"other syntax: 406", []string{`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1`}, instanceOffers(jpegLS, false), false, false, "", ""},
		{"implicit stored, explicit asked: transcoded", []string{`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1`}, instanceOffers(implicit, false), true, true, mediaDICOM, explicit},
		{"big endian stored, explicit LE asked: transcoded", []string{`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1`}, instanceOffers("1.2.840.10008.1.2.2", false), true, true, mediaDICOM, explicit},
		{"implicit stored, * asked: as stored", []string{`multipart/related; type="application/dicom"; transfer-syntax=*`}, instanceOffers(implicit, false), true, true, mediaDICOM, implicit},
		{"explicit stored, implicit asked: 406", []string{`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2`}, instanceOffers(explicit, false), false, false, "", ""},
		{"fallback entry wins", []string{`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1, multipart/related; type="application/dicom"; transfer-syntax=*; q=0.9`}, instanceOffers(jpegLS, false), true, true, mediaDICOM, jpegLS},
		{"single part instance", []string{"application/dicom"}, instanceOffers(explicit, true), true, false, mediaDICOM, explicit},
		{"single part refused for a study", []string{"application/dicom"}, instanceOffers(explicit, false), false, false, "", ""},
		{"q orders preference", []string{"application/dicom;q=0.4, multipart/related; type=application/dicom; q=0.9"}, instanceOffers(explicit, true), true, true, mediaDICOM, explicit},
		{"q=0 refuses", []string{"multipart/related; type=application/dicom; q=0"}, instanceOffers(explicit, false), false, false, "", ""},
		{"xml refused", []string{`multipart/related; type="application/dicom+xml"`}, instanceOffers(explicit, false), false, false, "", ""},
		{"multiple header lines", []string{"text/html", "multipart/related; type=application/dicom"}, instanceOffers(explicit, false), true, true, mediaDICOM, explicit},
		{"garbage entry skipped", []string{"garbage, ;;, multipart/related; type=application/dicom"}, instanceOffers(explicit, false), true, true, mediaDICOM, explicit},

		{"ohif frames native", []string{ohifFrames}, frameOffers(explicit, pixelSyntaxes(explicit), false, false), true, true, mediaOctetStream, explicit},
		{"ohif frames implicit stored", []string{ohifFrames}, frameOffers(implicit, pixelSyntaxes(implicit), false, false), true, true, mediaOctetStream, explicit},
		{"implicit pixels labelled as asked", []string{"multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2"}, frameOffers(implicit, pixelSyntaxes(implicit), false, false), true, true, mediaOctetStream, implicit},
		{"ohif frames jpeg-ls as octet-stream", []string{ohifFrames}, frameOffers(jpegLS, pixelSyntaxes(jpegLS), true, false), true, true, mediaOctetStream, jpegLS},
		{"combined list, jls stored", []string{ohifCombined}, frameOffers(jpegLS, pixelSyntaxes(jpegLS), true, false), true, true, "image/jls", jpegLS},
		{"combined list, jpeg stored", []string{ohifCombined}, frameOffers(jpegBase, pixelSyntaxes(jpegBase), true, false), true, true, mediaJPEG, jpegBase},
		{"combined list, native stored", []string{ohifCombined}, frameOffers(explicit, pixelSyntaxes(explicit), false, false), true, true, mediaOctetStream, explicit},
		{"frames star star encapsulated", []string{"*/*"}, frameOffers(jpegLS, pixelSyntaxes(jpegLS), true, false), true, true, "image/jls", jpegLS},
		{"frames image wildcard", []string{"multipart/related; type=image/*"}, frameOffers(jpegBase, pixelSyntaxes(jpegBase), true, false), true, true, mediaJPEG, jpegBase},
		{"frames jpeg asked, jls stored: 406", []string{`multipart/related; type="image/jpeg"`}, frameOffers(jpegLS, pixelSyntaxes(jpegLS), true, false), false, false, "", ""},
		{"frames uncompressed asked, jls stored: 406", []string{`multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1`}, frameOffers(jpegLS, pixelSyntaxes(jpegLS), true, false), false, false, "", ""},
		{"rle old alias", []string{`multipart/related; type="image/x-dicom-rle"`}, frameOffers(rle, pixelSyntaxes(rle), true, false), true, true, "image/dicom-rle", rle},
		{"single frame bare octet-stream", []string{"application/octet-stream"}, frameOffers(explicit, pixelSyntaxes(explicit), false, true), true, false, mediaOctetStream, explicit},
		{"single frame bare jpeg", []string{"image/jpeg"}, frameOffers(jpegBase, pixelSyntaxes(jpegBase), true, true), true, false, mediaJPEG, jpegBase},

		{"metadata default", nil, metadataOffers, true, false, mediaDICOMJSON, ""},
		{"metadata json", []string{"application/json"}, metadataOffers, true, false, mediaJSON, ""},
		{"metadata dicom+json charset", []string{"application/dicom+json; charset=utf-8"}, metadataOffers, true, false, mediaDICOMJSON, ""},
		{"metadata xml", []string{`multipart/related; type="application/dicom+xml"`}, metadataOffers, true, true, mediaDICOMXML, ""},
		{"metadata bare xml: 406", []string{"application/dicom+xml"}, metadataOffers, false, false, "", ""},
		{"metadata ohif", []string{"application/dicom+json, application/json;q=0.9, */*;q=0.1"}, metadataOffers, true, false, mediaDICOMJSON, ""},

		{"rendered default jpeg", nil, renderedOffers, true, false, mediaJPEG, ""},
		{"rendered png", []string{"image/png"}, renderedOffers, true, false, mediaPNG, ""},
		{"rendered png preferred", []string{"image/jpeg;q=0.5, image/png"}, renderedOffers, true, false, mediaPNG, ""},
		{"rendered gif: 406", []string{"image/gif"}, renderedOffers, false, false, "", ""},
		{"rendered image star", []string{"image/*"}, renderedOffers, true, false, mediaJPEG, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var accept []mediaRange
			if tt.accept != nil {
				accept = parseAccept(tt.accept)
			}
			ch, ok := negotiate(accept, tt.offers)
			if ok != tt.ok {
				t.Fatalf("ok=%v, want %v (choice %+v)", ok, tt.ok, ch)
			}
			if !ok {
				return
			}
			if got, want := ch.multipart, tt.multipart; got != want {
				t.Errorf("multipart=%v, want %v", got, want)
			}
			if got, want := ch.mediaType, tt.mediaType; got != want {
				t.Errorf("media type=%q, want %q", got, want)
			}
			if got, want := ch.transferSyntax, tt.ts; got != want {
				t.Errorf("transfer syntax=%q, want %q", got, want)
			}
		})
	}
}

// TestParseMediaRange checks the lenient parameter parsing viewers need.
func TestParseMediaRange(t *testing.T) {
	r, ok := parseMediaRange(`Multipart/Related ; Type = "application/dicom" ; transfer-syntax=1.2.840.10008.1.2.1 ;q=0.7`)
	if !ok {
		t.Fatal("not parsed")
	}
	if got, want := r.mediaType, "multipart/related"; got != want {
		t.Errorf("media type=%q, want %q", got, want)
	}
	if got, want := r.params["type"], "application/dicom"; got != want {
		t.Errorf("type=%q, want %q", got, want)
	}
	if got, want := r.params["transfer-syntax"], "1.2.840.10008.1.2.1"; got != want {
		t.Errorf("transfer-syntax=%q, want %q", got, want)
	}
	if got, want := r.q, 0.7; got != want {
		t.Errorf("q=%v, want %v", got, want)
	}
	for _, bad := range []string{"", "text", "/x", "a/b; q=2", "a/b; q=x"} {
		if _, ok := parseMediaRange(bad); ok {
			t.Errorf("parseMediaRange(%q) ok, want refused", bad)
		}
	}
	if got := splitQuoted(`a; type="x,y", b`, ','); len(got) != 2 || got[0] != `a; type="x,y"` {
		t.Errorf("splitQuoted kept quotes badly: %q", got)
	}
}
