# frozen_string_literal: true

module OpsChain
  # lazy { … }: a property value worked out when first used. Until then it says it is a LazyPropertyValue;
  # afterwards it behaves as (and says it is) the value.
  class LazyPropertyValue < BasicObject
    def initialize(&block)
      @block = block
      @resolved = false
    end

    def __value__
      unless @resolved
        @value = @block.call
        @resolved = true
      end
      @value
    end

    def is_a?(klass) = @resolved ? @value.is_a?(klass) : klass == ::OpsChain::LazyPropertyValue
    alias kind_of? is_a?
    def instance_of?(klass) = @resolved ? @value.instance_of?(klass) : klass == ::OpsChain::LazyPropertyValue
    def ==(other) = __value__ == other
    def !=(other) = __value__ != other
    def !() = !__value__
    def respond_to?(name, include_all = false) = %i[is_a? kind_of? instance_of? __value__].include?(name) || __value__.respond_to?(name, include_all)
    def method_missing(name, *args, &block) = __value__.__send__(name, *args, &block)
    def respond_to_missing?(name, include_all = false) = __value__.respond_to?(name, include_all)
  end

  # An available action of a controller: name, description, step name, ignore_failure.
  ControllerAction = Struct.new(:name, :description, :step_name, :ignore_failure, keyword_init: true) do
    # available_actions: names, { name:, description:, step_name:, ignore_failure: } hashes, or name → description.
    def self.list(specs)
      Array(specs.is_a?(Hash) ? [specs] : specs).flat_map do |spec|
        case spec
        when Hash
          named = spec.transform_keys(&:to_sym)
          if named.key?(:name)
            [new(name: named[:name].to_sym, description: named[:description], step_name: named[:step_name], ignore_failure: named[:ignore_failure])]
          else
            spec.map { |name, description| new(name: name.to_sym, description: description) }
          end
        else [new(name: spec.to_sym)]
        end
      end
    end
  end

  # resource_type :city do … end: properties, a controller, actions; defines the `city` DSL method.
  class ResourceType
    attr_reader :name, :property_names, :actions, :controller_class, :controller_actions

    def self.define(name, &block)
      type = new(name)
      type.instance_eval(&block) if block
      type.validate!
      Dsl.send(:define_method, name) { |resource_name, &definition| Resource.define(type, resource_name, &definition) }
      type
    end

    def initialize(name)
      @name = name.to_sym
      @property_names = []
      @actions = []
      @controller_actions = nil
    end

    def property(name, *) = @property_names << name.to_sym

    def controller(klass, available_actions: nil)
      @controller_class = klass
      @controller_actions = available_actions.nil? ? nil : ControllerAction.list(available_actions)
      @property_names |= Array(klass.resource_type_properties).map(&:to_sym) if klass.respond_to?(:resource_type_properties)
    end

    def desc(text) = @description = text

    def action(*args, **options, &block)
      options = { description: @description }.merge(options) if @description
      @description = nil
      @actions << [args, options, block]
    end

    # The controller's actions: available_actions: when given, else its resource_type_actions.
    def default_controller_actions
      return @controller_actions if @controller_actions
      return [] unless controller_class.respond_to?(:resource_type_actions)

      ControllerAction.list(controller_class.resource_type_actions)
    end

    def validate!
      return unless controller_class
      return if controller_class.respond_to?(:validate_action_methods?) && !controller_class.validate_action_methods?

      default_controller_actions.each do |spec|
        next if controller_class.public_method_defined?(spec.name)

        raise ArgumentError, "#{controller_class} does not define the action method #{spec.name}"
      end
    end
  end

  # A resource: its properties (dot, symbol, string access), its controller, and its actions in a namespace
  # named after it. In its definition block any unknown one-argument call sets a property, and a bare name
  # reads a property or finds another resource (this namespace first, then each parent).
  class Resource
    NOTHING = Object.new.freeze

    attr_reader :resource_type, :resource_name, :scope_path

    def self.define(type, name, &block)
      resource = new(type, name, Rake.application.current_scope.path)
      Dsl.resources[resource.path] = resource
      resource.instance_eval(&block) if block
      resource.define_actions
      resource
    end

    # path: "name" (searched from scope_path outwards) or "^a:b" (from the root); "a:b" is relative too.
    def self.lookup(path, scope_path)
      text = path.to_s
      return Dsl.resources[text[1..]] if text.start_with?('^')

      parts = scope_path.to_s.split(':')
      parts.length.downto(0).each do |depth|
        found = Dsl.resources[[*parts.first(depth), text].join(':')]
        return found if found
      end
      nil
    end

    def initialize(type, name, scope_path)
      @resource_type = type
      @resource_name = name.to_s
      @scope_path = scope_path
      @values = Properties.new
      @pending = [] # [:set, key, value] and [:merge, values or lazy], applied in order when first read
      @actions = []
      @available = nil
      @ignored_failures = []
    end

    def path = [scope_path, resource_name].reject(&:empty?).join(':')

    # name 'x' sets the name property; name reads it (the resource's own name when it has none).
    def name(*args)
      return method_missing(:name, *args) unless args.empty?

      resolve_property_sets
      @values.key?('name') ? @values['name'] : resource_name
    end

    # properties → the resource's properties; properties(hash or lazy { hash }) deep merges them in.
    def properties(values = NOTHING)
      if values.equal?(NOTHING)
        resolve_property_sets
        return @values
      end
      @pending << [:merge, values]
      @controller = nil
    end

    def controller
      return nil unless resource_type.controller_class

      @controller ||= resource_type.controller_class.new(properties)
    end

    def ref(path) = Resource.lookup(path, scope_path) || raise(ArgumentError, "no resource #{path} from #{path}")
    alias resource ref

    def lazy(&block) = LazyPropertyValue.new(&block)

    # Replaces the controller actions this resource shows; a description or step name not given is the type's.
    def available_actions(*specs)
      defaults = resource_type.default_controller_actions.to_h { |spec| [spec.name, spec] }
      @available = ControllerAction.list(specs.length == 1 && specs.first.is_a?(Hash) ? specs.first : specs).map do |spec|
        default = defaults[spec.name]
        next spec unless default

        ControllerAction.new(name: spec.name, description: spec.description || default.description,
                             step_name: spec.step_name || default.step_name, ignore_failure: spec.ignore_failure.nil? ? default.ignore_failure : spec.ignore_failure)
      end
    end

    def ignore_failures(*names)
      names.map(&:to_sym).each do |name|
        raise ArgumentError, "#{path}: ignore_failures :#{name} is not one of its available actions" unless controller_actions.any? { |spec| spec.name == name }

        @ignored_failures << name
      end
    end

    def desc(text) = @description = text

    def action(*args, **options, &block)
      options = { description: @description }.merge(options) if @description
      @description = nil
      @actions << [args, options, block]
    end

    def controller_actions = @available || resource_type.default_controller_actions

    # Controller actions first, then the type's actions, then the resource's own; an action of the same name
    # runs the controller's method, then the type's block.
    def define_actions
      resource = self
      Rake.application.in_namespace(resource_name) do
        Dsl.extending do
          resource.controller_actions.each do |spec|
            options = { description: spec.description, step_name: spec.step_name,
                        ignore_failure: spec.ignore_failure || resource.ignored_failure?(spec.name) }.compact
            Dsl.define([spec.name], options, proc { resource.controller.public_send(spec.name) }, receiver: resource)
          end
          (resource.resource_type.actions + resource.own_actions).each { |args, options, block| Dsl.define(args, options, block, receiver: resource) }
        end
      end
    end

    def own_actions = @actions
    def ignored_failure?(name) = @ignored_failures.include?(name.to_sym)

    def method_missing(name, *args, &block)
      key = name.to_s
      if args.length == 1 && !block && !key.end_with?('=', '?', '!')
        @pending << [:set, key, args.first.is_a?(Resource) ? args.first.controller : args.first]
        @controller = nil
        return args.first
      end
      if args.empty? && !block
        resolve_property_sets
        return @values[key] if @values.key?(key)

        found = Resource.lookup(key, scope_path)
        return found if found
      end
      super
    end

    def respond_to_missing?(name, include_private = false)
      resolve_property_sets
      @values.key?(name.to_s) || super
    end

    def inspect = "#<OpsChain::Resource #{resource_type.name} #{path}>"

    private

    def resolve_property_sets
      until @pending.empty?
        kind, *operation = @pending.shift
        if kind == :set
          @values[operation[0]] = operation[1]
        else
          values = operation[0].is_a?(LazyPropertyValue) ? operation[0].__value__ : operation[0]
          @values.deep_merge!(Properties.plain(values))
        end
      end
    end
  end
end

::LazyPropertyValue = OpsChain::LazyPropertyValue unless defined?(::LazyPropertyValue)

# 'melbourne'.controller / :melbourne.properties: the resource of that name, searched from the namespace of the
# running action outwards.
module OpsChain
  module ResourceByName
    def controller = found_resource.controller
    def properties = found_resource.properties

    private

    def found_resource
      Resource.lookup(to_s, Thread.current[:opschain_scope]) || raise(NoMethodError, "no resource named #{to_s.inspect} for #{inspect}.controller/properties")
    end
  end
end
String.include(OpsChain::ResourceByName)
Symbol.include(OpsChain::ResourceByName)
