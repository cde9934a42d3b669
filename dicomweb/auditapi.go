package dicomweb

// auditRoutes lists the routes of this resource (stub until its issue lands).
func (s *Server) auditRoutes(base string) []route {
	return nil
}
