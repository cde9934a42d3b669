package dicomcodec

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"math"
	"strings"
)

// MaxRenderFrameBytes bounds the frame a rendered or thumbnail request may
// decode into memory; larger frames are ErrCannotRender (fetch the frame and
// render it client-side).
const MaxRenderFrameBytes = 128 << 20

// maxRenderPixels bounds the decoded image (4 bytes a pixel for colour).
const maxRenderPixels = 64 << 20

// RenderOptions shape a rendered image (PS3.18 8.3.5).
type RenderOptions struct {
	// Window, when set, replaces the header's window: WindowCenter and
	// WindowWidth in modality units (after rescale).
	Window       bool
	WindowCenter float64
	WindowWidth  float64
	// MaxWidth and MaxHeight scale the image down, keeping its aspect ratio,
	// to fit (0 = no limit).
	MaxWidth, MaxHeight int
	// Upscale also scales an image smaller than MaxWidth × MaxHeight up to
	// fit (a viewport, PS3.18 8.3.5.1.3), with nearest-neighbour sampling
	// and at most maxUpscaleSide pixels a side, so that a viewport of
	// 16384×16384 cannot ask for a gigabyte of image.
	Upscale bool
}

// maxUpscaleSide bounds each side of an image scaled up to a viewport.
const maxUpscaleSide = 4096

// renderParams are the header attributes that say how to turn stored samples
// into an image.
type renderParams struct {
	rows, cols, spp, bitsAllocated, bitsStored, highBit int
	signed                                              bool
	planar                                              bool
	photometric                                         string
	slope, intercept                                    float64
	center, width                                       float64
	hasWindow                                           bool
	order                                               binary.ByteOrder
	rle                                                 bool // frames are RLE Lossless (PS3.5 Annex G)
}

// CheckRenderable reports, without reading pixel data, whether Render can
// decode the frames of an instance with header md stored in transfer syntax
// ts: native (uncompressed) greyscale (MONOCHROME1/2, 8 to 32 bits
// allocated) or RGB/YBR_FULL colour, RLE Lossless, and JPEG baseline.
// Otherwise it returns ErrCannotRender (the frame can still be fetched as it
// is stored).
func CheckRenderable(md Dataset, ts string) error {
	_, err := renderParamsOf(md, ts)
	return err
}

func renderParamsOf(md Dataset, ts string) (*renderParams, error) {
	num := func(tag string, def float64) float64 {
		if v, ok := md.Number(tag, 0); ok {
			return v
		}
		return def
	}
	p := &renderParams{
		rows:          int(num(TagRows, 0)),
		cols:          int(num(TagColumns, 0)),
		spp:           int(num(TagSamplesPerPixel, 1)),
		bitsAllocated: int(num(TagBitsAllocated, 0)),
		signed:        num(TagPixelRepresentation, 0) == 1,
		planar:        num(TagPlanarConfiguration, 0) == 1,
		photometric:   strings.ToUpper(strings.TrimSpace(md.String(TagPhotometricInterpretation))),
		slope:         num(TagRescaleSlope, 1),
		intercept:     num(TagRescaleIntercept, 0),
		order:         binary.LittleEndian,
	}
	p.bitsStored = int(num(TagBitsStored, float64(p.bitsAllocated)))
	p.highBit = int(num(TagHighBit, float64(p.bitsStored-1)))
	if p.slope == 0 {
		p.slope = 1
	}
	if c, ok := md.Number(TagWindowCenter, 0); ok {
		if w, ok := md.Number(TagWindowWidth, 0); ok && w > 0 {
			p.center, p.width, p.hasWindow = c, w, true
		}
	}
	if p.rows <= 0 || p.cols <= 0 || p.rows*p.cols > maxRenderPixels {
		return nil, fmt.Errorf("%d×%d pixels cannot be rendered: %w", p.rows, p.cols, ErrCannotRender)
	}
	switch {
	case ts == TSJPEGBaseline:
		return p, nil
	case ts == TSExplicitBE:
		p.order = binary.BigEndian
	case ts == TSImplicitLE || ts == TSExplicitLE:
	case ts == TSRLELossless:
		p.rle = true
	default:
		return nil, fmt.Errorf("rendering from transfer syntax %s is not supported (fetch the frames instead): %w", ts, ErrCannotRender)
	}
	grey := p.photometric == "MONOCHROME1" || p.photometric == "MONOCHROME2"
	colour := p.photometric == "RGB" || p.photometric == "YBR_FULL"
	switch {
	case grey && p.spp == 1 && p.bitsAllocated == 1 && !p.rle:
	case grey && p.spp == 1 && (p.bitsAllocated == 8 || p.bitsAllocated == 16 || p.bitsAllocated == 32):
	case colour && p.spp == 3 && (p.bitsAllocated == 8 || p.bitsAllocated == 16):
	default:
		return nil, fmt.Errorf("rendering %s with %d sample(s) of %d bits is not supported: %w",
			p.photometric, p.spp, p.bitsAllocated, ErrCannotRender)
	}
	if p.bitsStored < 1 || p.bitsStored > p.bitsAllocated || p.highBit < p.bitsStored-1 || p.highBit >= p.bitsAllocated {
		return nil, fmt.Errorf("bits stored %d, high bit %d do not fit %d bits allocated: %w",
			p.bitsStored, p.highBit, p.bitsAllocated, ErrCannotRender)
	}
	return p, nil
}

// Render decodes one frame of an instance with header md stored in transfer
// syntax ts, read from frame (size bytes), into an 8-bit image: greyscale through the
// modality rescale and a linear VOI window (the one in opts, else the
// header's first WindowCenter/Width, else the frame's min/max), inverted for
// MONOCHROME1; colour as RGB. The frame is held in memory while it is decoded
// (at most MaxRenderFrameBytes).
func Render(md Dataset, ts string, frame io.Reader, size int64, opts RenderOptions) (image.Image, error) {
	p, err := renderParamsOf(md, ts)
	if err != nil {
		return nil, err
	}
	if size > MaxRenderFrameBytes {
		return nil, fmt.Errorf("frame of %d bytes is too large to render: %w", size, ErrCannotRender)
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(frame, data); err != nil {
		return nil, fmt.Errorf("read frame: %w", err)
	}
	var img image.Image
	if ts == TSJPEGBaseline {
		// The decoder allocates the image its own SOF header declares: a
		// few bytes of JPEG claiming 24000×24000 would cost gigabytes.
		// Only a frame of the header's Rows × Columns (already bounded by
		// maxRenderPixels) is decoded.
		cfg, cerr := jpeg.DecodeConfig(bytes.NewReader(data))
		if cerr != nil {
			return nil, fmt.Errorf("JPEG frame cannot be decoded (%v): %w", cerr, ErrCannotRender)
		}
		if cfg.Width != p.cols || cfg.Height != p.rows {
			return nil, fmt.Errorf("JPEG frame is %d×%d pixels, the header says %d×%d: %w",
				cfg.Width, cfg.Height, p.cols, p.rows, ErrCannotRender)
		}
		img, err = jpeg.Decode(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("JPEG frame cannot be decoded (%v): %w", err, ErrCannotRender)
		}
	} else {
		if p.rle {
			if data, err = decodeRLE(data, p.rows*p.cols, p.spp, p.bitsAllocated/8); err != nil {
				return nil, fmt.Errorf("%v: %w", err, ErrCannotRender)
			}
			p.order, p.planar = binary.LittleEndian, false
		}
		n := (p.rows*p.cols*p.spp*p.bitsAllocated + 7) / 8
		if len(data) < n {
			return nil, fmt.Errorf("frame has %d bytes, %d×%d×%d samples of %d bits need %d: %w",
				len(data), p.rows, p.cols, p.spp, p.bitsAllocated, n, ErrCannotRender)
		}
		if p.spp == 1 {
			img = p.grey(data, opts)
		} else {
			img = p.colour(data)
		}
	}
	return fit(img, opts.MaxWidth, opts.MaxHeight, opts.Upscale), nil
}

// sample returns the i-th stored sample as a modality value (before rescale).
func (p *renderParams) sample(data []byte, i int) float64 {
	var raw uint32
	switch p.bitsAllocated {
	case 1: // bit-packed, least significant bit first (PS3.5 8.1.1)
		return float64(data[i/8] >> uint(i%8) & 1)
	case 8:
		raw = uint32(data[i])
	case 16:
		raw = uint32(p.order.Uint16(data[2*i:]))
	case 32:
		raw = p.order.Uint32(data[4*i:])
	}
	raw >>= uint(p.highBit + 1 - p.bitsStored)
	if p.bitsStored < 32 {
		raw &= 1<<uint(p.bitsStored) - 1
	}
	if p.signed && raw&(1<<uint(p.bitsStored-1)) != 0 {
		return float64(int64(raw) - int64(1)<<uint(p.bitsStored))
	}
	return float64(raw)
}

// grey applies rescale and the VOI window (PS3.3 C.11.2.1.2.1, linear).
func (p *renderParams) grey(data []byte, opts RenderOptions) *image.Gray {
	n := p.rows * p.cols
	center, width := p.center, p.width
	switch {
	case opts.Window:
		center, width = opts.WindowCenter, opts.WindowWidth
	case !p.hasWindow:
		lo, hi := math.Inf(1), math.Inf(-1)
		for i := range n {
			v := p.sample(data, i)*p.slope + p.intercept
			lo, hi = min(lo, v), max(hi, v)
		}
		center, width = (lo+hi)/2, hi-lo+1
	}
	width = max(width, 1)
	lower := center - 0.5 - (width-1)/2
	upper := center - 0.5 + (width-1)/2
	invert := p.photometric == "MONOCHROME1"
	img := image.NewGray(image.Rect(0, 0, p.cols, p.rows))
	for i := range n {
		v := p.sample(data, i)*p.slope + p.intercept
		var y float64
		switch {
		case v <= lower:
			y = 0
		case v > upper:
			y = 255
		default:
			y = ((v-(center-0.5))/(width-1) + 0.5) * 255
		}
		y = math.Round(min(max(y, 0), 255))
		if invert {
			y = 255 - y
		}
		img.Pix[i] = uint8(y)
	}
	return img
}

// colour converts RGB or YBR_FULL samples (interleaved or planar) to RGBA.
func (p *renderParams) colour(data []byte) *image.RGBA {
	n := p.rows * p.cols
	img := image.NewRGBA(image.Rect(0, 0, p.cols, p.rows))
	shift := uint(max(p.bitsStored-8, 0))
	at := func(pixel, s int) uint8 {
		i := pixel*3 + s
		if p.planar {
			i = s*n + pixel
		}
		v := p.sample(data, i)
		return uint8(min(max(int(v)>>shift, 0), 255))
	}
	for i := range n {
		r, g, b := at(i, 0), at(i, 1), at(i, 2)
		if p.photometric == "YBR_FULL" {
			r, g, b = color.YCbCrToRGB(r, g, b)
		}
		img.Pix[4*i], img.Pix[4*i+1], img.Pix[4*i+2], img.Pix[4*i+3] = r, g, b, 255
	}
	return img
}

// fit scales img to fit maxW×maxH, keeping its aspect ratio (0 means no
// limit in that direction): down by area average, and, when upscale is set
// and both limits are given, up to the largest size that fits (each output
// pixel takes the nearest source pixel), at most maxUpscaleSide a side.
func fit(img image.Image, maxW, maxH int, upscale bool) image.Image {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	scale := 1.0
	if maxW > 0 && w > maxW {
		scale = float64(maxW) / float64(w)
	}
	if maxH > 0 && h > maxH {
		scale = min(scale, float64(maxH)/float64(h))
	}
	if upscale && scale == 1 && maxW > 0 && maxH > 0 {
		scale = min(float64(min(maxW, maxUpscaleSide))/float64(w), float64(min(maxH, maxUpscaleSide))/float64(h))
		scale = max(scale, 1)
	}
	if scale == 1 {
		return img
	}
	// Rounded, so that an exact fit (a 256×128 image in a 512×512
	// viewport) is 512×256 and not one pixel short.
	// w×scale ≤ maxW, an integer, so rounding never leaves the box.
	nw, nh := max(int(math.Round(float64(w)*scale)), 1), max(int(math.Round(float64(h)*scale)), 1)
	out := image.NewRGBA(image.Rect(0, 0, nw, nh))
	gray, isGray := img.(*image.Gray)
	var grayOut *image.Gray
	if isGray {
		grayOut = image.NewGray(out.Rect)
	}
	for y := range nh {
		y0, y1 := b.Min.Y+y*h/nh, b.Min.Y+max((y+1)*h/nh, y*h/nh+1)
		for x := range nw {
			x0, x1 := b.Min.X+x*w/nw, b.Min.X+max((x+1)*w/nw, x*w/nw+1)
			var sr, sg, sb, cnt uint32
			for yy := y0; yy < y1; yy++ {
				for xx := x0; xx < x1; xx++ {
					if isGray {
						sr += uint32(gray.Pix[gray.PixOffset(xx, yy)])
					} else {
						r, g, bb, _ := img.At(xx, yy).RGBA()
						sr, sg, sb = sr+r>>8, sg+g>>8, sb+bb>>8
					}
					cnt++
				}
			}
			if isGray {
				grayOut.Pix[y*grayOut.Stride+x] = uint8(sr / cnt)
				continue
			}
			i := out.PixOffset(x, y)
			out.Pix[i], out.Pix[i+1], out.Pix[i+2], out.Pix[i+3] = uint8(sr/cnt), uint8(sg/cnt), uint8(sb/cnt), 255
		}
	}
	if isGray {
		return grayOut
	}
	return out
}

// decodeRLE decodes one RLE Lossless frame (PS3.5 Annex G) into native
// little-endian, pixel-interleaved samples: the header lists one segment per
// byte of each sample, most significant byte first, each PackBits-encoded.
func decodeRLE(frame []byte, pixels, spp, bytesPerSample int) ([]byte, error) {
	if len(frame) < 64 {
		return nil, fmt.Errorf("RLE frame of %d bytes has no header", len(frame))
	}
	nseg := int(binary.LittleEndian.Uint32(frame))
	if nseg != spp*bytesPerSample || nseg > 15 {
		return nil, fmt.Errorf("RLE frame has %d segments, want %d", nseg, spp*bytesPerSample)
	}
	// PackBits turns at most 128 bytes into 2, so a segment shorter than
	// that bound cannot fill the frame the header claims: refuse it before
	// allocating by the header's Rows × Columns.
	minSegment := 2 * ((pixels + 127) / 128)
	for seg := range nseg {
		start := int(binary.LittleEndian.Uint32(frame[4+4*seg:]))
		end := len(frame)
		if seg+1 < nseg {
			end = int(binary.LittleEndian.Uint32(frame[8+4*seg:]))
		}
		if end-start < minSegment {
			return nil, fmt.Errorf("RLE segment %d has %d bytes, too few for %d pixels", seg, end-start, pixels)
		}
	}
	out := make([]byte, pixels*nseg)
	for seg := range nseg {
		start := int(binary.LittleEndian.Uint32(frame[4+4*seg:]))
		end := len(frame)
		if seg+1 < nseg {
			end = int(binary.LittleEndian.Uint32(frame[8+4*seg:]))
		}
		if start < 64 || start > end || end > len(frame) {
			return nil, fmt.Errorf("RLE segment %d offsets %d..%d out of range", seg, start, end)
		}
		sample, msbIndex := seg/bytesPerSample, seg%bytesPerSample
		// Byte k of a sample from the most significant lands at little-endian position bytesPerSample-1-k.
		pos := sample*bytesPerSample + bytesPerSample - 1 - msbIndex
		src, i := frame[start:end], 0
		for j := 0; j < len(src) && i < pixels; {
			n := int(int8(src[j]))
			j++
			switch {
			case n >= 0:
				for k := 0; k <= n && j < len(src) && i < pixels; k++ {
					out[i*nseg+pos] = src[j]
					i, j = i+1, j+1
				}
			case n != -128:
				if j >= len(src) {
					break
				}
				for k := 0; k < 1-n && i < pixels; k++ {
					out[i*nseg+pos] = src[j]
					i++
				}
				j++
			}
		}
		if i < pixels {
			return nil, fmt.Errorf("RLE segment %d decodes to %d of %d pixels", seg, i, pixels)
		}
	}
	return out, nil
}
