package dicomweb

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/dicom-gateway/gateway/dicomcodec"
	"github.com/dicom-gateway/gateway/gateway"
)

// thumbnailSize is the box a thumbnail fits in when the client gives no
// viewport.
const thumbnailSize = 128

// renderRequest is a rendered or thumbnail request, parsed.
type renderRequest struct {
	frame   int
	opts    dicomcodec.RenderOptions
	quality int
}

func (s *Server) handleRendered(c *gin.Context)  { s.serveRendered(c, false) }
func (s *Server) handleThumbnail(c *gin.Context) { s.serveRendered(c, true) }

// serveRendered answers /rendered and /thumbnail at instance level (the
// first frame) and frame level (exactly one frame) as image/jpeg or
// image/png (PS3.18 8.3.5, 10.4.1.1.3).
func (s *Server) serveRendered(c *gin.Context, thumbnail bool) {
	req := renderRequest{frame: 1, quality: 90}
	if fl := c.Param("frames"); fl != "" {
		frames, err := gateway.ParseFrameList(fl)
		if err == nil && len(frames) != 1 {
			err = fmt.Errorf("rendered frames: give exactly one frame number, not %d: %w", len(frames), gateway.ErrInvalid)
		}
		if err != nil {
			s.writeError(c, err)
			return
		}
		req.frame = frames[0]
	}
	if err := parseRenderQuery(c, &req, thumbnail); err != nil {
		s.writeError(c, err)
		return
	}
	rec, ok := s.instance(c)
	if !ok {
		return
	}
	s.render(c, rec, req, parseAccept(c.Request.Header.Values("Accept")))
}

// render negotiates the image type and has the retrieve service check,
// audit and decode the frame; it encodes the image and answers it with its
// length. The image is encoded before the status line, so a decode failure
// is a clean error.
func (s *Server) render(c *gin.Context, rec *gateway.InstanceRecord, req renderRequest, accept []mediaRange) {
	ch, ok := negotiate(accept, renderedOffers)
	if !ok {
		s.writeError(c, notAcceptable(accept, "rendered image", renderedOffers))
		return
	}
	var buf bytes.Buffer
	detail := map[string]any{"rendered": ch.mediaType, "frames": req.frame}
	err := s.svc.Retrieve.Render(c.Request.Context(), s.caller(c), rec, req.frame, req.opts, detail, func(img image.Image) error {
		return encodeImage(&buf, img, ch.mediaType, req.quality)
	})
	if err != nil {
		s.writeError(c, err)
		return
	}
	c.Data(http.StatusOK, ch.mediaType, buf.Bytes())
}

func encodeImage(buf *bytes.Buffer, img image.Image, mediaType string, quality int) error {
	if mediaType == mediaPNG {
		return png.Encode(buf, img)
	}
	return jpeg.Encode(buf, img, &jpeg.Options{Quality: quality})
}

// parseRenderQuery reads the rendered query parameters (PS3.18 8.3.5.1):
// window=center,width[,function], viewport=vw,vh (or
// vw,vh,sx,sy,sw,sh: the source region is not supported and is refused),
// quality=1..100. A thumbnail without a viewport fits thumbnailSize.
func parseRenderQuery(c *gin.Context, req *renderRequest, thumbnail bool) error {
	if w := c.Query("window"); w != "" {
		f := strings.Split(w, ",")
		if len(f) < 2 || len(f) > 3 {
			return fmt.Errorf("window=%q: want center,width[,function]: %w", truncate(w, 60), gateway.ErrInvalid)
		}
		center, err1 := strconv.ParseFloat(strings.TrimSpace(f[0]), 64)
		width, err2 := strconv.ParseFloat(strings.TrimSpace(f[1]), 64)
		if err1 != nil || err2 != nil || width < 1 {
			return fmt.Errorf("window=%q: center and width (≥ 1) must be numbers: %w", truncate(w, 60), gateway.ErrInvalid)
		}
		if len(f) == 3 && !strings.EqualFold(strings.TrimSpace(f[2]), "linear") {
			return fmt.Errorf("window function %q: only linear is supported: %w", truncate(f[2], 20), gateway.ErrInvalid)
		}
		req.opts.Window, req.opts.WindowCenter, req.opts.WindowWidth = true, center, width
	}
	if v := c.Query("viewport"); v != "" {
		f := strings.Split(v, ",")
		if len(f) != 2 {
			return fmt.Errorf("viewport=%q: want width,height: %w", truncate(v, 60), gateway.ErrInvalid)
		}
		w, err1 := strconv.Atoi(strings.TrimSpace(f[0]))
		h, err2 := strconv.Atoi(strings.TrimSpace(f[1]))
		if err1 != nil || err2 != nil || w < 1 || h < 1 || w > 1<<14 || h > 1<<14 {
			return fmt.Errorf("viewport=%q: width and height must be 1 to 16384: %w", truncate(v, 60), gateway.ErrInvalid)
		}
		// The image fits the viewport, scaled up as well as down
		// (PS3.18 8.3.5.1.3), keeping its aspect ratio.
		req.opts.MaxWidth, req.opts.MaxHeight, req.opts.Upscale = w, h, true
	} else if thumbnail {
		req.opts.MaxWidth, req.opts.MaxHeight = thumbnailSize, thumbnailSize
	}
	if q := c.Query("quality"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 || n > 100 {
			return fmt.Errorf("quality=%q: want 1 to 100: %w", truncate(q, 20), gateway.ErrInvalid)
		}
		req.quality = n
	}
	return nil
}
