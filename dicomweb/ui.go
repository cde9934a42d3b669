package dicomweb

// uiRoutes lists the routes of this resource (stub until its issue lands).
func (s *Server) uiRoutes(base string) []route {
	return nil
}
