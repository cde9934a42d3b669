package dicomweb

// wadoRoutes lists the routes of this resource (stub until its issue lands).
func (s *Server) wadoRoutes(base string) []route {
	return nil
}
